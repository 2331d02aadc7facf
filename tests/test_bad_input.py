"""Bad input and misuse, fed to the CLIs as a new user would: a clear message naming file, line, id or flag and
what to do, exit status 2 for misuse (1 for inspect's "not usable"), no traceback, no run folder left behind."""

import contextlib
import io
import json
import pathlib

import pytest

from chtn_tf.data import inspect as inspect_cli
from chtn_tf.data import load_dataset
from chtn_tf.data.checks import check_usable
from chtn_tf.data.types import DatasetError
from chtn_tf.model.config import ExperimentConfig
from tests.fixtures_data import make_listed_dataset, photo_rows, real_photos, write_manifest
from training import fit, tune
from training.run import format_results


@pytest.fixture(scope="module")
def photos(real_data_dir):
    return real_photos(real_data_dir)


@pytest.fixture
def manifest(tmp_path, photos):
    """A clean manifest of 24 real photos, 3 classes, with a split column."""
    return write_manifest(tmp_path / "pairs.csv", photo_rows(photos))


def run_fit(argv, capsys):
    """``fit.main(argv)`` -> (status, stdout, stderr); argparse's exit becomes its status."""
    try:
        status = fit.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def run_inspect(argv, capsys):
    status = inspect_cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


# ---------------------------------------------------------------- fit: flags and config files

@pytest.mark.parametrize("flag,value,says", [
    ("--epochs", "0", "at least 1"), ("--epochs", "-1", "at least 1"), ("--epochs", "two", "a whole number"),
    ("--batch-size", "0", "at least 1"), ("--learning-rate", "0", "above 0"), ("--learning-rate", "-0.1", "above 0"),
    ("--seed", "-3", "at least 0"), ("--max-dropped", "1.5", "at most 1.0"), ("--mmd-weight", "-1", "at least 0"),
])
def test_fit_refuses_a_bad_number_before_reading_anything(tmp_path, manifest, capsys, flag, value, says):
    out = tmp_path / "run"
    status, _, err = run_fit(["--manifest", manifest, "--out", str(out), flag, value], capsys)
    assert status == 2
    assert f"argument {flag}: must be" in err and says in err
    assert not out.exists()


def write_config(path, values) -> str:
    path.write_text(json.dumps(values), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("values,says", [
    ({"train": {"epochs": "two"}}, "train.epochs must be a whole number, got 'two'"),
    ({"train": {"epochs": 0}}, "train.epochs must be at least 1, got 0"),
    ({"train": {"batch_size": 2.5}}, "train.batch_size must be a whole number"),
    ({"optimizer": {"learning_rate": -1}}, "optimizer.learning_rate must be above 0.0"),
    ({"model": {"dropout": 1.0}}, "model.dropout must be at least 0.0 and below 1.0"),
    ({"loss": {"pair": "high"}}, "loss.pair must be a number"),
    ({"train": 3}, "config section 'train' must be an object"),
    ([1, 2], "a config is a JSON object"),
    ({"train": {"epoch": 3}}, "unknown field(s) ['epoch']"),
])
def test_fit_refuses_a_config_file_with_wrong_values(tmp_path, manifest, capsys, values, says):
    config = write_config(tmp_path / "bad.json", values)
    out = tmp_path / "run"
    status, _, err = run_fit(["--manifest", manifest, "--config", config, "--out", str(out)], capsys)
    assert status == 2
    assert config in err and says in err
    assert not out.exists()


def test_fit_refuses_a_missing_config_file_and_an_out_that_is_a_file(tmp_path, manifest, capsys):
    missing = str(tmp_path / "nope.json")
    status, _, err = run_fit(["--manifest", manifest, "--config", missing, "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and f"config file {missing} not found" in err
    assert not (tmp_path / "run").exists()

    taken = tmp_path / "results.txt"
    taken.write_text("mine")
    status, _, err = run_fit(["--manifest", manifest, "--out", str(taken)], capsys)
    assert status == 2 and f"--out {taken} is a file" in err
    assert taken.read_text() == "mine"


# ---------------------------------------------------------------- manifests: the reader

def test_a_non_utf8_cell_costs_its_row_only(tmp_path, photos):
    rows = photo_rows(photos)
    rows[4] = (rows[4][0], "caf\xe9".encode("latin-1") + b" au lait", rows[4][2], rows[4][3])
    rows[7] = (rows[7][0], "line one\nline two", rows[7][2], rows[7][3])  # a quoted cell over two lines
    rows[9] = (rows[9][0], "足球比赛".encode("gb18030"), rows[9][2], rows[9][3])
    path = write_manifest(tmp_path / "pairs.csv", rows)
    dataset = load_dataset(manifest=path)
    bad = [p for p in dataset.problems if p.kind == "bad_text_encoding"]
    # Line = 1 (header) + row number; row 7's text spans two lines, so row 9 starts one line later.
    assert [(p.where, p.pair_id) for p in bad] == [(f"{path}:6", "pairs.csv:6"), (f"{path}:12", "pairs.csv:12")]
    assert "text not valid UTF-8 (byte 0xe9)" in bad[0].message and "iconv" in bad[0].message
    assert sum(len(s) for s in dataset.splits.values()) == len(rows) - 2
    assert "line one\nline two" in dataset.splits[rows[7][3]].texts


def test_a_header_only_manifest_says_it_has_no_rows(tmp_path, capsys):
    path = write_manifest(tmp_path / "empty.csv", [])
    with pytest.raises(DatasetError, match="has a header but no rows; add one row per pair: image,text,label,split"):
        load_dataset(manifest=path)
    status, _, err = run_fit(["--manifest", path, "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and "has a header but no rows" in err
    assert not (tmp_path / "run").exists()
    status, _, err = run_inspect(["--manifest", path], capsys)
    assert status == 1 and "has a header but no rows" in err


def test_empty_and_blank_texts_are_skipped_and_reported(tmp_path, photos):
    rows = photo_rows(photos)
    rows[2] = (rows[2][0], "", rows[2][2], rows[2][3])
    rows[3] = (rows[3][0], "  \t ", rows[3][2], rows[3][3])
    path = write_manifest(tmp_path / "pairs.csv", rows)
    dataset = load_dataset(manifest=path)
    empty = [p for p in dataset.problems if p.kind == "empty_text"]
    assert [p.where for p in empty] == [f"{path}:4", f"{path}:5"] and all(p.dropped for p in empty)
    assert all(t.strip() for s in dataset.splits.values() for t in s.texts)


def test_an_empty_text_file_in_a_listed_dataset_is_skipped(tmp_path):
    make_listed_dataset(tmp_path / "webnews")
    (tmp_path / "webnews" / "texts" / "5.txt").write_text(" \n\t\n", encoding="utf-8")
    dataset = load_dataset("webnews", data_dir=str(tmp_path), validate_images=False)
    empty = [p for p in dataset.problems if p.kind == "empty_text"]
    assert [(p.pair_id, p.split) for p in empty] == [("5", "train")]
    assert "5" not in dataset.splits["train"].ids + dataset.splits["val"].ids


def test_exact_duplicate_rows_are_dropped_once_with_their_lines(tmp_path, photos):
    rows = photo_rows(photos, splits=("",))  # no split given: the reader splits
    rows += [rows[0], rows[0], rows[5]]  # lines 26, 27 repeat line 2; line 28 repeats line 7
    path = write_manifest(tmp_path / "pairs.csv", rows)
    for seed in range(4):
        dataset = load_dataset(manifest=path, seed=seed)
        duplicates = [p for p in dataset.problems if p.kind == "duplicate_pair"]
        assert [p.where for p in duplicates] == [f"{path}:26", f"{path}:27", f"{path}:28"]
        assert f"same image and text as {path}:2" in duplicates[0].message
        assert f"same image and text as {path}:7" in duplicates[2].message
        kept = [(pathlib.Path(p).name, t) for s in dataset.splits.values() for p, t in zip(s.image_paths, s.texts)]
        assert len(kept) == len(set(kept)) == 24


def test_one_image_in_two_splits_is_reported_and_the_later_pair_dropped(tmp_path, photos, capsys):
    rows = photo_rows(photos)
    train_row = next(r for r in rows if r[3] == "train")
    rows.append((train_row[0], "another caption of the same photo", train_row[2], "test"))  # line 26
    path = write_manifest(tmp_path / "pairs.csv", rows)
    dataset = load_dataset(manifest=path)
    leaks = [p for p in dataset.problems if p.kind == "split_leak"]
    assert len(leaks) == 1 and leaks[0].pair_id == "pairs.csv:26" and leaks[0].split == "test" and leaks[0].dropped
    assert "same image file is in train" in leaks[0].message and "--allow-leak" in leaks[0].message
    assert "pairs.csv:26" not in dataset.splits["test"].ids

    kept = load_dataset(manifest=path, allow_leak=True)
    assert "pairs.csv:26" in kept.splits["test"].ids
    assert any("share an image file" in w for w in check_usable(kept).warnings)

    status, out, _ = run_inspect(["--manifest", path], capsys)
    assert status == 0 and "split_leak [id pairs.csv:26, test]" in out
    status, out, err = run_inspect(["--manifest", path, "--allow-leak"], capsys)
    assert status == 0 and "kept (--allow-leak)" in out and "test MAP is optimistic" in err


def test_without_a_split_column_pairs_of_one_image_stay_in_one_split(tmp_path, photos):
    rows = photo_rows(photos, splits=("",))
    rows += [(r[0], r[1] + " again, in other words", r[2], "") for r in rows[::3]]
    path = write_manifest(tmp_path / "pairs.csv", rows)
    for seed in range(5):
        dataset = load_dataset(manifest=path, seed=seed)
        owner = {}
        for name, split in dataset.splits.items():
            for image in split.image_paths:
                assert owner.setdefault(image, name) == name
        assert not [p for p in dataset.problems if p.kind == "split_leak"]


# ---------------------------------------------------------------- inspect and fit agree

def test_a_class_only_in_test_is_refused_by_inspect_and_fit_alike(tmp_path, photos, capsys):
    rows = [r for r in photo_rows(photos) if r[2] != "economy" or r[3] == "test"]
    path = write_manifest(tmp_path / "pairs.csv", rows)
    status, _, err = run_inspect(["--manifest", path], capsys)
    assert status == 1
    reason = "class(es) with no training pair: 'economy' (val 0, test 2)"
    assert reason in err and "check the label spelling" in err
    status, _, err = run_fit(["--manifest", path, "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and reason in err
    assert not (tmp_path / "run").exists()
    status = tune.main(["--manifest", path, "--out", str(tmp_path / "search"), "--max-trials", "1", "--epochs", "1"])
    _, err = capsys.readouterr()
    assert status == 2 and reason in err and "Traceback" not in err
    assert not (tmp_path / "search").exists()


def test_too_many_dropped_pairs_are_refused_by_inspect_and_fit_alike(tmp_path, photos, capsys):
    rows = photo_rows(photos)
    for i in (2, 10, 18):
        rows[i] = (str(tmp_path / f"missing{i}.jpg"), *rows[i][1:])
    path = write_manifest(tmp_path / "pairs.csv", rows)
    status, _, err = run_inspect(["--manifest", path], capsys)
    assert status == 1 and "3 of 24 pairs were dropped (more than 5%)" in err
    status, out, err = run_fit(["--manifest", path, "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and "3 of 24 pairs were dropped (more than 5%)" in err and "--max-dropped" in err
    assert "missing_image: 3" in out
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def dirty_photo_run(tmp_path_factory, photos):
    """One fit (real photos, EfficientNet-Lite0) on a manifest with one of each recoverable defect."""
    root = tmp_path_factory.mktemp("dirty")
    rows = photo_rows(photos)
    rows[1] = (rows[1][0], b"\xff\xfe broken bytes", rows[1][2], rows[1][3])  # line 3: not UTF-8
    rows[2] = (rows[2][0], "   ", rows[2][2], rows[2][3])  # line 4: blank text
    train_row = rows[4]
    assert train_row[3] == "train"
    rows.append(train_row)  # line 26: exact repeat of a training row
    rows.append((train_row[0], "the same photo with another caption", train_row[2], "test"))  # line 27: leak
    lonely = sorted((pathlib.Path(photos["sports"][0]).parents[1] / "education").glob("*.jpg"))[0]
    rows.append((str(lonely), "a lonely pair", "lonely", "train"))  # line 28: a class with a single pair
    path = write_manifest(root / "pairs.csv", rows)
    config = ExperimentConfig()
    config.model.branch_widths, config.model.shared_widths, config.train.batch_size = (16, 16), (16, 8), 8
    config.to_json(str(root / "small.json"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = fit.main(["--manifest", path, "--config", str(root / "small.json"), "--out", str(root / "run"),
                           "--backbone", "efficientnet-lite0", "--source", "none", "--epochs", "1", "--quiet",
                           "--max-dropped", "0.2"])
    return {"status": status, "out": out.getvalue(), "err": err.getvalue(), "manifest": path, "root": root}


def test_fit_skips_and_reports_each_bad_pair_then_trains(dirty_photo_run):
    run = dirty_photo_run
    assert run["status"] == 0, run["err"]
    for line in ("bad_text_encoding: 1 (pairs.csv:3)", "empty_text: 1 (pairs.csv:4)",
                 "duplicate_pair: 1 (pairs.csv:26)", "split_leak: 1 (pairs.csv:27)"):
        assert line in run["out"]
    assert "class(es) with a single pair: 'lonely'" in run["err"]
    results = json.loads((run["root"] / "run" / "results.json").read_text())
    assert sorted(results["dropped_pairs"]) == ["pairs.csv:26", "pairs.csv:27", "pairs.csv:3", "pairs.csv:4"]


def test_inspect_gives_fit_s_verdict_and_warnings(dirty_photo_run, capsys):
    status, out, err = run_inspect(["--manifest", dirty_photo_run["manifest"], "--max-dropped", "0.2"], capsys)
    assert status == 0 and "usable: yes" in out
    fit_warnings = sorted(line for line in dirty_photo_run["err"].splitlines() if line.startswith("warning: "))
    assert sorted(line for line in err.splitlines() if line.startswith("warning: ")) == fit_warnings
    assert fit_warnings  # the single-pair class at least
    assert "dropped pairs: 4" in out


def test_the_map_table_keeps_its_columns_for_a_long_manifest_name():
    results = {"dataset": "manifest:/home/someone/collections/holiday_photos_2024.csv",
               "backbone": "efficientnet-lite0",
               "n_test": 125, "map_i2t": 0.5, "map_t2i": 0.25, "map_avg": 0.375, "val_map_avg": 0.4}
    header, row = format_results(results).splitlines()
    assert row.startswith(results["dataset"] + "  ")
    assert header.index("backbone") == row.index("efficientnet-lite0")
    assert [header.index(h) + len(h) for h in ("n_test", "I->T", "avg")] == [
        row.index(v) + len(v) for v in ("125", "0.5000", "0.3750")]

