"""Quality benchmark: test MAP@all of CHTN, its ablations and two baselines, mean ± std over seeds.

    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/quality.py [--seeds 0 1 2] [--datasets wikipedia webnews]
    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/quality.py --small [--draws 0 1 2 3 4] [--seeds 0]

Every method sees the same inputs in the same run: the dataset's image features (Wikipedia: the shipped
SIFT; Web News: the cached features of the raw images from the backbone ``--backbone auto`` picks, EfficientNet-
Lite2) and the raw texts; variants that train the backbone's top or swap the backbone get their own inputs,
the baselines take the default backbone's pooled features. Variants measured by an earlier run on the same
image input are kept (a slow variant can be run alone with fewer ``--seeds``). Writes
``benchmarks/results/quality.json``, ``benchmarks/results/quality.png`` and the quality table of
``benchmarks/RESULTS.md`` (between the ``quality`` markers), and ``benchmarks/results/mmd.png``: the MMD terms
over training of each variant.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import baselines  # noqa: E402
from benchmarks.report import command_line, machine, update_results_md  # noqa: E402
from chtn_tf.atomic import atomic_path, write_json_atomic  # noqa: E402
from chtn_tf.metrics.retrieval import evaluate_retrieval  # noqa: E402
from chtn_tf.model.config import dataset_config  # noqa: E402
from chtn_tf.model.text import is_cjk_text  # noqa: E402

# Each variant changes the dataset's default config; "image" variants change the image input, and are run only on
# datasets with raw images (they need a backbone).
VARIANTS = {
    "CHTN": {},
    "CHTN, text gallery codes from the network alone (default until 2026-12-03)": {
        "model.text_gallery_linear_weight": 0.0},
    "CHTN, no source transfer": {"loss.source_transfer": False},
    "CHTN, no pair constraint": {"loss.pair": 0.0},
    "CHTN, no shared layers": {"model.shared_layers": False},
    "CHTN, frozen backbone top": {"model.image_top_blocks": 0},
    "CHTN, one network 1024 wide (default until 2026-12-03)": {
        "model.members": 1, "model.branch_widths": (1024, 1024), "model.shared_widths": (1024, 1024)},
    "CHTN as of 2026-12-01 (frozen Lite0)": {"model.image_top_blocks": 0, "train.backbone": "efficientnet-lite0"},
    "CHTN, Lite0 top trained from ImageNet (1 block + head)": {"model.image_top_blocks": 1,
                                                               "train.backbone": "efficientnet-lite0"},
}
IMAGE_FIELDS = ("model.image_top_blocks", "train.backbone")
QUALITY_JSON = os.path.join(HERE, "results", "quality.json")
QUALITY_SMALL_JSON = os.path.join(HERE, "results", "quality_small.json")
PUBLISHED = {"wikipedia": [("SCM (published, Rasiwasia et al. 2010)", 0.277, 0.226)]}


def run_chtn(config, inputs, seed: int, overrides: dict) -> dict:
    from training.run import train_and_evaluate

    config = config.override({"train.seed": seed, **overrides})
    with tempfile.TemporaryDirectory(prefix="chtn-bench-") as run_dir:
        results = train_and_evaluate(config, inputs, run_dir, resume=False, verbose=0)
        with open(os.path.join(run_dir, "history.json"), encoding="utf-8") as f:
            history = json.load(f)
    out = {k: results[k] for k in ("map_i2t", "map_t2i", "map_avg", "val_map_avg", "train_seconds")}
    out["mmd"] = {k: history.get(k, []) for k in ("mmd_fc6", "mmd_fc7")}  # per epoch, for the MMD plot
    return out


def run_baselines(inputs) -> tuple[dict, dict]:
    """Both baselines on the training split, scored on test. They are deterministic: one run, not one per seed.

    CCA's settings (directions, ridge, text LSA width) are chosen by :func:`baselines.tune_cca` on a hold-out
    of the training pairs, as CHTN's checkpoint is chosen on validation; the test split is never consulted.
    """
    dataset = inputs.dataset
    train, test = dataset.splits["train"], dataset.splits["test"]
    analyzer = "char" if sum(is_cjk_text(t) for t in train.texts[:200]) > 100 else "word"
    train_txt, test_txt = baselines.text_features_tfidf(train.texts, test.texts, analyzer=analyzer)
    train_img, test_img = inputs.features["train"], inputs.features["test"]
    out = {}
    img_codes, txt_codes = baselines.semantic_matching(train_img, train_txt, train.labels, test_img, test_txt)
    out["Semantic matching (logistic regression)"] = _maps(img_codes, txt_codes, test.labels)
    tuned = baselines.tune_cca(train_img, train_txt, train.labels)
    img_codes, txt_codes = baselines.cca_codes(train_img, train_txt, test_img, test_txt, **tuned["settings"])
    out["CCA"] = _maps(img_codes, txt_codes, test.labels)
    details = {"text_analyzer": analyzer, "cca_settings": tuned["settings"], "cca_val_map_avg": tuned["val_map_avg"]}
    return out, details


def _maps(image_codes, text_codes, labels) -> dict:
    scores = evaluate_retrieval(image_codes, text_codes, labels, labels)
    return {k: scores[k] for k in ("map_i2t", "map_t2i", "map_avg")}


def summarise(runs: list) -> dict:
    """``[{metric: value}]`` over seeds -> ``{metric: [mean, std]}`` (numeric entries only)."""
    return {k: [float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))] for k in runs[0]
            if isinstance(runs[0][k], (int, float))}


def markdown_table(dataset: str, table: dict, counts: dict) -> str:
    """The dataset's table; ``counts[method]`` = how many runs (seeds) its mean ± std is over.

    The last column is each method's mean MAP minus CHTN's: an ablation's measured effect, whatever its sign.
    """
    lines = [f"### {dataset}", "", "Test MAP@all, mean ± std over the runs counted (one per seed; the baselines are "
             "deterministic, so one run). Δ = mean MAP minus CHTN's.", "",
             "| method | runs | I→T | T→I | mean | Δ vs CHTN |", "|---|---|---|---|---|---|"]
    reference = table["CHTN"]["map_avg"][0] if "CHTN" in table else None
    for method, scores in table.items():
        cells = [f"{scores[k][0]:.3f} ± {scores[k][1]:.3f}" for k in ("map_i2t", "map_t2i", "map_avg")]
        delta = "" if reference is None or method == "CHTN" else f"{scores['map_avg'][0] - reference:+.3f}"
        lines.append(f"| {method} | {counts.get(method, '')} | " + " | ".join(cells) + f" | {delta} |")
    for method, i2t, t2i in PUBLISHED.get(dataset, []):
        avg = (i2t + t2i) / 2
        delta = "" if reference is None else f"{avg - reference:+.3f}"
        lines.append(f"| {method} | published | {i2t:.3f} | {t2i:.3f} | {avg:.3f} | {delta} |")
    return "\n".join(lines)


def run_counts(entry: dict) -> dict:
    return {method: len(runs) for method, runs in entry["runs"].items() if runs}


def plot(all_tables: dict, path: str) -> None:
    """One horizontal bar chart per dataset: mean test MAP (± std over seeds), published anchors hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_tables), figsize=(6.5 * len(all_tables), 4), squeeze=False)
    for ax, (dataset, table) in zip(axes[0], all_tables.items()):
        names = list(table) + [name for name, _, _ in PUBLISHED.get(dataset, [])]
        means = [table[n]["map_avg"][0] for n in table] + [(a + b) / 2 for _, a, b in PUBLISHED.get(dataset, [])]
        stds = [table[n]["map_avg"][1] for n in table] + [0.0] * len(PUBLISHED.get(dataset, []))
        colors = ["C0" if n.startswith("CHTN") else "C7" for n in table] + ["white"] * len(PUBLISHED.get(dataset, []))
        bars = ax.barh(range(len(names)), means, xerr=stds, color=colors, edgecolor="C7")
        for bar, name in zip(bars, names):
            if "published" in name:
                bar.set_hatch("//")
        for y, (mean, std) in enumerate(zip(means, stds)):
            ax.text(mean + std + 0.005, y, f"{mean:.3f}", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlim(0, max(means) * 1.15)
        ax.set_xlabel("test MAP@all (mean of I→T and T→I)")
        ax.set_title(dataset)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def plot_mmd(report: dict, path: str) -> bool:
    """The MMD terms over training (mean over seeds) of every CHTN variant that has them, one panel per dataset
    with raw images; False (nothing drawn) when no run recorded them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {}
    for dataset, entry in report["datasets"].items():
        curves = {}
        for method, runs in entry["runs"].items():
            series = [r["mmd"] for r in runs if isinstance(r.get("mmd"), dict) and any(r["mmd"].get("mmd_fc6", []))]
            if series:
                length = min(len(s["mmd_fc6"]) for s in series)
                curves[method] = {k: np.mean([s[k][:length] for s in series], axis=0) for k in ("mmd_fc6", "mmd_fc7")}
        if curves:
            panels[dataset] = curves
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
    for ax, (dataset, curves) in zip(axes[0], panels.items()):
        for i, (method, terms) in enumerate(curves.items()):
            epochs = np.arange(1, len(terms["mmd_fc6"]) + 1)
            ax.plot(epochs, terms["mmd_fc6"], color=f"C{i}", label=f"{method}: lower layer")
            ax.plot(epochs, terms["mmd_fc7"], color=f"C{i}", linestyle="--", label=f"{method}: upper layer")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training MMD (source vs target images)")
        ax.set_title(f"{dataset}: where MMD is taken differs (see text)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return True


def render_report(report: dict) -> None:
    """``quality.png`` and the quality section of RESULTS.md from a report (the content of quality.json)."""
    tables = {name: entry["summary"] for name, entry in report["datasets"].items()}
    plot(tables, os.path.join(HERE, "results", "quality.png"))
    sections = []
    for dataset, table in tables.items():
        entry = report["datasets"][dataset]
        backbone = entry.get("backbone") or {}
        images = ("the shipped 128-d SIFT features" if backbone.get("name") in (None, "precomputed")
                  else f"{backbone['name']} features ({backbone.get('feature_dim')}-d) of the raw images")
        notes = [f"{entry['n_test']} test pairs; image side: {images}; texts: raw, as each method vectorises them."]
        if not entry["runs"].get("CHTN, no source transfer"):
            notes.append("No source-transfer ablation: with precomputed image features there is no ImageNet source "
                         "domain to transfer from, so CHTN here already runs without it.")
        if entry.get("baselines"):
            settings = entry["baselines"]["cca_settings"]
            notes.append(f"CCA settings chosen on a hold-out of the training pairs: {settings['n_components']} "
                         f"directions, ridge {settings['reg']}, text reduced to {settings['text_components']} "
                         f"LSA dimensions (hold-out MAP {entry['baselines']['cca_val_map_avg']:.3f}).")
        sections.append(markdown_table(dataset, table, run_counts(entry)) + "\n\n" + " ".join(notes))
    body = "\n\n".join([
        "## Quality",
        f"Command: `{report['command'].strip()}` — {report['date']}, {report['machine']}, {report['seconds'] / 60:.0f} min. "
        "CHTN runs use each dataset's defaults (`chtn_tf/model/config.py`); ablations change one switch.",
        *sections,
        "![quality](results/quality.png)",
        *(["![MMD over training](results/mmd.png)"] if plot_mmd(report, os.path.join(HERE, "results", "mmd.png"))
          else []),
    ])
    update_results_md("quality", body)


def write_report(report: dict, started: float) -> None:
    report["seconds"] = round(time.time() - started, 1)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    if os.path.exists(QUALITY_JSON):
        # Datasets measured by an earlier (or parallel) run with other --datasets are kept.
        with open(QUALITY_JSON, encoding="utf-8") as f:
            previous = json.load(f)
        for name, entry in previous.get("datasets", {}).items():
            if name not in report["datasets"]:
                report["datasets"][name] = entry
                continue
            # Variants measured by an earlier run (other --variants, e.g. fewer seeds for a slow one) are kept
            # when they were measured on the same image input.
            current = report["datasets"][name]
            if entry.get("backbone") == current.get("backbone"):
                for method, runs in entry.get("runs", {}).items():
                    if runs and not current["runs"].get(method):
                        current["runs"][method] = runs
                        current["summary"][method] = summarise(runs)
                order = [*VARIANTS, *current["runs"]]  # CHTN and its variants first, then the baselines
                for key in ("runs", "summary"):
                    current[key] = {m: current[key][m] for m in sorted(current[key], key=order.index)}
    write_json_atomic(QUALITY_JSON, report)
    render_report(report)


def run_small(args, report: dict, started: float) -> int:
    """``--small``: CHTN with a new collection's defaults (what ``training.fit --manifest`` uses) against both
    baselines on the small-collection test bed (:mod:`benchmarks.testbed`); mean ± std over draws (each draw's
    CHTN score is the mean over ``--seeds``)."""
    from benchmarks.testbed import SMALL_COLLECTIONS, draw_collection
    from training.inputs import add_train_views, prepare_inputs

    parents, report["collections"] = {}, {}
    for spec in SMALL_COLLECTIONS:
        if spec.parent not in parents:
            parents[spec.parent] = prepare_inputs(dataset_config(spec.parent), progress=True)
        runs = {"CHTN (defaults for a new collection)": [], "Semantic matching (logistic regression)": [], "CCA": []}
        for draw in args.draws:
            inputs = draw_collection(parents[spec.parent], spec, draw)
            if inputs.backbone.get("name") != "precomputed":
                # As training.fit --manifest does: cached views of the draw's training images.
                inputs = add_train_views(inputs, dataset_config(None).train.image_views, progress=False)
            for name, scores in run_baselines(inputs)[0].items():
                runs[name].append({**scores, "draw": draw})
            seeds = [run_chtn(dataset_config(None), inputs, seed, {}) for seed in args.seeds]
            mean = {k: float(np.mean([r[k] for r in seeds])) for k in ("map_i2t", "map_t2i", "map_avg")}
            runs["CHTN (defaults for a new collection)"].append({**mean, "draw": draw, "seeds": seeds})
            print(f"[{spec.name} #{draw}] " + "  ".join(f"{name.split(' (')[0]} {r[-1]['map_avg']:.4f}"
                                                        for name, r in runs.items()), flush=True)
        report["collections"][spec.name] = {
            "runs": runs, "n_train": len(inputs.dataset.splits["train"]), "n_test": len(inputs.dataset.splits["test"]),
            "summary": {name: summarise([{k: r[k] for k in ("map_i2t", "map_t2i", "map_avg")} for r in rows])
                        for name, rows in runs.items()}}
        report["seconds"] = round(time.time() - started, 1)
        write_json_atomic(QUALITY_SMALL_JSON, report)
        render_small_report(report)
    return 0


def render_small_report(report: dict) -> None:
    """The small-collection section of RESULTS.md from a ``--small`` report."""
    lines = ["| collection | train / test pairs | method | I→T | T→I | mean | draws won vs SM / CCA |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in report["collections"].items():
        runs = entry["runs"]
        chtn = runs["CHTN (defaults for a new collection)"]
        for method, scores in entry["summary"].items():
            cells = [f"{scores[k][0]:.3f} ± {scores[k][1]:.3f}" for k in ("map_i2t", "map_t2i", "map_avg")]
            won = ""
            if method.startswith("CHTN"):
                won = " / ".join(str(sum(c["map_avg"] > b["map_avg"] for c, b in zip(chtn, runs[other])))
                                 + f" of {len(chtn)}" for other in ("Semantic matching (logistic regression)", "CCA"))
            lines.append(f"| {name} | {entry['n_train']} / {entry['n_test']} | {method} | " + " | ".join(cells)
                         + f" | {won} |")
    body = "\n\n".join([
        "## Quality on small unseen collections",
        f"Command: `{report['command'].strip()}` — {report['date']}, {report['machine']}, "
        f"{report['seconds'] / 60:.0f} min. Collections drawn by `benchmarks/testbed.py` (7 classes × 50 pairs, "
        f"split 70/10/20 per draw; draws {report['draws']}); CHTN with the defaults `training.fit --manifest` uses "
        f"(seeds {report['seeds']} averaged per draw); mean ± std over draws.",
        "\n".join(lines)])
    update_results_md("quality-small", body)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["wikipedia", "webnews"])
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="training seeds (default 0 1 2; with --small 0: the spread there is over draws)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--small", action="store_true",
                        help="the small-collection test bed instead (benchmarks/testbed.py): new-collection "
                             "defaults vs the baselines, --draws draws, --seeds seeds each")
    parser.add_argument("--draws", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--report-only", action="store_true",
                        help="only redraw the plot and the RESULTS.md table from results/quality.json "
                             "(with --small: from results/quality_small.json)")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ([0] if args.small else [0, 1, 2])
    if args.report_only:
        with open(QUALITY_SMALL_JSON if args.small else QUALITY_JSON, encoding="utf-8") as f:
            (render_small_report if args.small else render_report)(json.load(f))
        return 0
    if args.small:
        started = time.time()
        report = {"date": datetime.date.today().isoformat(), "seeds": args.seeds, "draws": args.draws,
                  "machine": machine(),
                  "command": command_line("quality.py", sys.argv[1:] if argv is None else argv)}
        return run_small(args, report, started)

    from training.inputs import prepare_inputs

    started = time.time()
    report = {"date": datetime.date.today().isoformat(), "seeds": args.seeds,
              "machine": machine(),
              "command": command_line("quality.py", sys.argv[1:] if argv is None else argv), "datasets": {}}
    tables = {}
    for dataset in args.datasets:
        config = dataset_config(dataset)
        prepared = {}

        def inputs_for(overrides: dict):
            """Prepared inputs of the image settings a variant uses (each prepared once)."""
            image = {k: overrides[k] for k in IMAGE_FIELDS if k in overrides}
            key = json.dumps(image, sort_keys=True)
            if key not in prepared:
                prepared[key] = prepare_inputs(config.override(image), progress=True)
            return prepared[key]

        inputs = inputs_for({})
        image_data = inputs.backbone.get("name") != "precomputed"
        # The baselines take the pooled features of the default's backbone (frozen whole).
        baseline_inputs = inputs_for({"model.image_top_blocks": 0}) if image_data else inputs
        runs = {name: [] for name in args.variants}
        runs.update({"Semantic matching (logistic regression)": [], "CCA": []})
        baseline_scores, baseline_details = run_baselines(baseline_inputs)
        for name, scores in baseline_scores.items():
            print(f"[{dataset}] {name}: test MAP avg {scores['map_avg']:.4f}", flush=True)
            runs[name].append(scores)
        for seed in args.seeds:
            for name in args.variants:
                overrides = VARIANTS[name]
                if overrides.get("loss.source_transfer") is False and inputs.source_features is None:
                    continue  # no source domain here (precomputed features): identical to plain CHTN
                if any(k in overrides for k in IMAGE_FIELDS) and not image_data:
                    continue  # precomputed features: no backbone to train or swap
                if overrides == {"model.image_top_blocks": 0} and not config.model.image_top_blocks:
                    continue  # the default already keeps the backbone frozen
                print(f"[{dataset}] seed {seed}: {name}", flush=True)
                runs[name].append(run_chtn(config, inputs_for(overrides), seed, overrides))
                print(f"    test MAP avg {runs[name][-1]['map_avg']:.4f}", flush=True)
        tables[dataset] = {name: summarise(r) for name, r in runs.items() if r}
        report["datasets"][dataset] = {"runs": runs, "summary": tables[dataset], "backbone": inputs.backbone,
                                       "n_test": len(inputs.dataset.splits["test"]), "baselines": baseline_details}
        print(markdown_table(dataset, tables[dataset], run_counts(report["datasets"][dataset])), flush=True)
        write_report(report, started)  # after each dataset: a long run keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
