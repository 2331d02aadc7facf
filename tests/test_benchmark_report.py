"""The benchmark reports: RESULTS.md sections are replaced in place, quality tables summarise runs correctly."""

import numpy as np

from benchmarks.quality import markdown_table, run_counts, summarise
from benchmarks.report import update_results_md


def test_update_results_md_replaces_only_its_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\nintro kept\n", encoding="utf-8")
    update_results_md("quality", "old quality", path=str(path))
    update_results_md("speed", "speed figures", path=str(path))
    update_results_md("quality", "new quality\nsecond line", path=str(path))
    text = path.read_text(encoding="utf-8")
    assert text.count("<!-- quality:begin -->") == 1 and "old quality" not in text
    assert "new quality\nsecond line" in text and "speed figures" in text and "intro kept" in text
    assert text.index("quality:begin") < text.index("speed:begin")  # replaced where it was, not appended


def test_summarise_and_table_against_hand_computation():
    runs = {"CHTN": [{"map_i2t": 0.5, "map_t2i": 0.3, "map_avg": 0.4},
                     {"map_i2t": 0.7, "map_t2i": 0.3, "map_avg": 0.5}],
            "CCA": [{"map_i2t": 0.2, "map_t2i": 0.1, "map_avg": 0.15}],
            "CHTN, no shared layers": []}
    summary = {name: summarise(r) for name, r in runs.items() if r}
    assert np.allclose(summary["CHTN"]["map_i2t"], [0.6, 0.1])  # population std of (0.5, 0.7)
    assert np.allclose(summary["CHTN"]["map_t2i"], [0.3, 0.0])
    table = markdown_table("wikipedia", summary, run_counts({"runs": runs}))
    lines = table.splitlines()
    assert "| CHTN | 2 | 0.600 ± 0.100 | 0.300 ± 0.000 | 0.450 ± 0.050 |  |" in lines
    assert "| CCA | 1 | 0.200 ± 0.000 | 0.100 ± 0.000 | 0.150 ± 0.000 | -0.300 |" in lines
    assert "| SCM (published, Rasiwasia et al. 2010) | published | 0.277 | 0.226 | 0.252 | -0.199 |" in lines
    assert not any("no shared layers" in line for line in lines)


def test_small_collection_table_counts_the_draws_won_by_hand(monkeypatch):
    import benchmarks.quality as quality

    written = {}
    monkeypatch.setattr(quality, "update_results_md", lambda section, body: written.update({section: body}))

    def row(avg):
        return {"map_i2t": avg + 0.02, "map_t2i": avg - 0.02, "map_avg": avg}

    chtn, sm, cca = "CHTN (defaults for a new collection)", "Semantic matching (logistic regression)", "CCA"
    runs = {chtn: [row(0.5), row(0.4)], sm: [row(0.45), row(0.42)], cca: [row(0.3), row(0.35)]}
    report = {"command": "quality.py --small", "date": "2026-12-02", "machine": "m", "seconds": 60, "draws": [0, 1],
              "seeds": [0], "collections": {"webnews-350": {
                  "runs": runs, "n_train": 246, "n_test": 70,
                  "summary": {name: summarise(rows) for name, rows in runs.items()}}}}
    quality.render_small_report(report)
    lines = written["quality-small"].splitlines()
    # CHTN wins draw 0 against SM (0.5 > 0.45) but not draw 1 (0.4 < 0.42); both against CCA.
    assert ("| webnews-350 | 246 / 70 | CHTN (defaults for a new collection) | 0.470 ± 0.050 | 0.430 ± 0.050 | "
            "0.450 ± 0.050 | 1 of 2 / 2 of 2 |") in lines
    assert "| webnews-350 | 246 / 70 | CCA | 0.345 ± 0.025 | 0.305 ± 0.025 | 0.325 ± 0.025 |  |" in lines
