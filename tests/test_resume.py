"""Run folders survive misuse and kills: a resumed run (even after SIGKILL) gives the uninterrupted run's result,
leftovers are removed, a changed config or other data is refused without touching the folder, and checkpoints
hold each variable once, by name."""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from chtn_tf.atomic import folder_lock
from chtn_tf.model.config import ExperimentConfig
from chtn_tf.model.persist import build_model_from_run, encoder_variables, optimizer_variables
from export import layout, saved_model
from tests.fixtures_data import make_wikipedia_fixture
from training import checkpoint, fit

REPO = str(pathlib.Path(__file__).resolve().parents[1])
EPOCHS = 6


def snapshot(folder) -> dict:
    """``{relative path: sha256}`` of every file under ``folder``."""
    folder = pathlib.Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_fit(argv, capsys):
    status = fit.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Wikipedia-layout data, a small config (with dropout, so resume must carry the RNG state), and the
    uninterrupted reference run of EPOCHS epochs."""
    root = tmp_path_factory.mktemp("resume")
    make_wikipedia_fixture(root / "data")
    config = ExperimentConfig()
    config.model.branch_widths, config.model.shared_widths = (32, 32), (32, 16)
    config.model.dropout, config.train.batch_size = 0.3, 16
    config.to_json(str(root / "small.json"))
    argv = ["--dataset", "wikipedia", "--data-dir", str(root / "data"), "--config", str(root / "small.json"),
            "--quiet", "--learning-rate", "0.05"]
    reference = root / "reference"
    assert fit.main(argv + ["--out", str(reference), "--epochs", str(EPOCHS)]) == 0
    return {"root": root, "argv": argv, "reference": reference}


def history(run) -> dict:
    return json.loads((pathlib.Path(run) / "history.json").read_text())


def assert_same_training(run, reference):
    ours, theirs = history(run), history(reference)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6, err_msg=key)
    a = json.loads((pathlib.Path(run) / "results.json").read_text())
    b = json.loads((pathlib.Path(reference) / "results.json").read_text())
    assert a["best_epoch"] == b["best_epoch"] and a["map_avg"] == pytest.approx(b["map_avg"], abs=1e-6)


def test_sigkill_then_rerun_removes_leftovers_and_matches_the_uninterrupted_run(setup, capsys):
    run = setup["root"] / "killed"
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen([sys.executable, "-m", "training.fit", *setup["argv"], "--out", str(run),
                                "--epochs", str(EPOCHS)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not (run / checkpoint.LAST_DIR / "checkpoint").exists():
            assert process.poll() is None, "training.fit ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 180 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (run / "results.json").exists()  # killed mid-training

    # What a kill in the middle of a save leaves, named as the writers name it; and files that are not ours.
    leftovers = [".tmp-k2j4l1x0", ".tmp-q9w8e7r6.weights.h5", "config.json.tmp-4242",
                 "checkpoints/last.old-4242/model.weights.h5", "checkpoints/.tmp-last-a1b2c3d4/state.json",
                 "checkpoints/last/ckpt-99_temp/part-00000-of-00001.index", "checkpoints/last/ckpt-98.index",
                 "checkpoints/last/ckpt-98.data-00000-of-00001", "checkpoints/best/checkpoint.tmp0123abcd"]
    ours = ["notes.txt", "data.tmp-2024.csv", "checkpoints/README", "checkpoints/last/mine.txt"]
    for name in leftovers + ours:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")

    status, out, _ = run_fit(setup["argv"] + ["--out", str(run), "--epochs", str(EPOCHS)], capsys)
    assert status == 0
    assert "Resuming" in out and "leftover(s) of an interrupted run" in out
    for name in leftovers:
        assert not (run / name).exists(), name
    for name in ours:
        assert (run / name).read_text() == "x", name
    assert_same_training(run, setup["reference"])


def test_an_interrupted_run_resumed_with_more_epochs_records_the_change(setup, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_fit(setup["argv"] + ["--out", str(run), "--epochs", "2"], capsys)[0] == 0
    status, out, _ = run_fit(setup["argv"] + ["--out", str(run), "--epochs", str(EPOCHS)], capsys)
    assert status == 0 and "Resuming" in out and "train.epochs 2 -> 6" in out
    assert_same_training(run, setup["reference"])
    changes = json.loads((run / "config_history.json").read_text())
    assert [(c["from_epoch"], c["changed"]) for c in changes] == [(3, {"train.epochs": [2, EPOCHS]})]
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == EPOCHS


def test_a_changed_config_is_refused_with_its_fields_and_nothing_is_touched(setup, capsys):
    run = setup["reference"]
    before = snapshot(run)
    status, _, err = run_fit(setup["argv"] + ["--out", str(run), "--epochs", str(EPOCHS), "--learning-rate", "0.1",
                                              "--batch-size", "8"], capsys)
    assert status == 2
    assert "optimizer.learning_rate: 0.05 -> 0.1" in err and "train.batch_size: 16 -> 8" in err
    assert "new --out" in err and "--no-resume" in err
    assert snapshot(run) == before


def test_other_classes_are_refused_without_a_keras_traceback(setup, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(setup["root"] / "data", data)
    info = data / "wikipedia" / "wikipedia_info"
    (info / "categories.list").write_text("art\nbiology\nsport\ngeography\n")
    lines = (info / "trainset_txt_img_cat.list").read_text().splitlines()
    lines[-6:] = [line.rsplit("\t", 1)[0] + "\t4" for line in lines[-6:]]
    (info / "trainset_txt_img_cat.list").write_text("\n".join(lines) + "\n")
    argv = [a if a != str(setup["root"] / "data") else str(data) for a in setup["argv"]]
    run = setup["reference"]
    before = snapshot(run)
    status, _, err = run_fit(argv + ["--out", str(run), "--epochs", str(EPOCHS)], capsys)
    assert status == 2
    assert "holds a run trained on other data: the classes differ (run: 3, data now: 4; new: geography)" in err
    assert snapshot(run) == before


def test_a_folder_in_use_is_refused(setup, capsys):
    run = setup["reference"]
    before = snapshot(run)
    with folder_lock(str(run)):
        status, _, err = run_fit(setup["argv"] + ["--out", str(run), "--epochs", str(EPOCHS)], capsys)
    assert status == 2 and "in use by another process" in err
    assert snapshot(run) == before


def test_no_resume_replaces_the_run(setup, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(setup["reference"], run)
    status, _, _ = run_fit(setup["argv"] + ["--out", str(run), "--epochs", "1", "--learning-rate", "0.1",
                                            "--no-resume"], capsys)
    assert status == 0
    assert len(history(run)["loss"]) == 1
    assert json.loads((run / "config.json").read_text())["optimizer"]["learning_rate"] == 0.1


def test_a_run_folder_of_an_older_version_is_refused(setup, tmp_path, capsys):
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(setup["reference"] / "config.json", run / "config.json")
    (run / "best.weights.h5").write_bytes(b"weights")
    before = snapshot(run)
    status, _, err = run_fit(setup["argv"] + ["--out", str(run), "--epochs", str(EPOCHS)], capsys)
    assert status == 2 and "written by an older chtn version" in err
    assert snapshot(run) == before


def test_checkpoints_hold_each_variable_once_by_name(setup):
    run = str(setup["reference"])
    def names(subdir):
        return {name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(os.path.join(run, subdir)))}

    last, best = names(checkpoint.LAST_DIR), names(checkpoint.BEST_DIR)
    value = "/.ATTRIBUTES/VARIABLE_VALUE"
    # Optimiser slots are named after their variable (SGD with momentum: one slot per trainable variable).
    assert f"optimizer/fc6_i_kernel_momentum{value}" in last and f"optimizer/iteration{value}" in last
    assert f"model/fc6_i:kernel{value}" in last and f"model/fc6_i_dropout:seed_generator_state{value}" in last
    assert not any(name.startswith("optimizer/") for name in best)  # export needs no optimiser state
    assert not any(name.startswith("model/fc6_s") for name in best)  # nor the training-only source branch

    model, _ = build_model_from_run(run)
    model.compile(optimizer=tf.keras.optimizers.SGD(momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    state = checkpoint.RunCheckpoints(run, model, writer=False).restore_last()
    assert state["epoch"] == EPOCHS - 1
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(run, checkpoint.LAST_DIR)))
    for name, variable in optimizer_variables(model.optimizer).items():
        np.testing.assert_array_equal(variable.numpy(), reader.get_tensor(f"optimizer/{name}{value}"))
    # The model variables of last are exactly the encoders' plus the training-only ones, each once.
    assert {k for k in last if k.startswith("model/")} >= {f"model/{k}{value}" for k in encoder_variables(model)}


def test_a_checkpoint_of_another_model_is_refused_by_name(setup, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(setup["reference"], run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["branch_widths"] = [32, 24]
    (run / "config.json").write_text(json.dumps(config))
    model, _ = build_model_from_run(str(run))
    model.compile(optimizer=tf.keras.optimizers.SGD(momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"other shape: .*fc7_i:kernel \(32, 32\) -> \(32, 24\)"):
        checkpoint.RunCheckpoints(str(run), model, writer=False).restore_last()


def test_sigkill_during_export_then_rerun_removes_the_staging_folder(feature_run, tmp_path):
    run = feature_run["run"]
    serving = tmp_path / "serving"
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen([sys.executable, "-m", "export.saved_model", "--run", run, "--out", str(serving)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not list((serving / "chtn_image").glob(".tmp-1-*")):
            assert process.poll() is None, "the export ended before staging a version"
            assert time.time() < deadline, "no staging folder within 180 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not layout.existing_versions(str(serving / "chtn_image"))  # nothing half-published

    written = saved_model.export_run(run, str(serving))
    assert written["version"] == 1
    for model in ("chtn_image", "chtn_text"):
        assert sorted(p.name for p in (serving / model).iterdir()) == ["1"]


def test_early_stopping_continues_its_count_after_a_resume():
    from training.callbacks import ResumableEarlyStopping, stopped_early

    class Model:
        stop_training = False

    state = {"epoch": 5, "best_epoch": 3, "best": 0.9}  # two epochs without improvement so far
    resumed, fresh = ResumableEarlyStopping(patience=3, state=state), ResumableEarlyStopping(patience=3)
    for callback in (resumed, fresh):
        callback.set_model(Model())
        callback.on_train_begin()
    resumed.on_epoch_end(6, {"val_map_avg": 0.85})
    fresh.on_epoch_end(6, {"val_map_avg": 0.85})
    assert resumed.model.stop_training and not fresh.model.stop_training
    assert not stopped_early(state, 3) and stopped_early({**state, "epoch": 6}, 3) and not stopped_early(state, 0)


@pytest.mark.slow  # ~30-60 s on 2 cores: in `pytest -m slow` (CI runs both)
def test_widths_left_to_the_data_are_chosen_once_written_and_resumed(setup, tmp_path, capsys):
    config = ExperimentConfig.from_json(str(setup["root"] / "small.json"))
    config.model.branch_widths, config.model.shared_widths, config.model.members = (0, 0), (0, 16), 0
    config.to_json(str(tmp_path / "auto.json"))
    argv = [*setup["argv"][:setup["argv"].index("--config")], "--config", str(tmp_path / "auto.json"), "--quiet",
            "--out", str(tmp_path / "run")]
    status, out, _ = run_fit(argv + ["--epochs", "1"], capsys)
    # The fixture's training split is far below 362 pairs: 128 wide (chtn_tf.model.sizing.width_for).
    assert status == 0 and "branches [128, 128], shared [128, 16], 5 member(s)" in out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (saved["branch_widths"], saved["shared_widths"], saved["members"]) == ([128, 128], [128, 16], 5)
    status, out, err = run_fit(argv + ["--epochs", "2"], capsys)
    assert status == 0 and "Resuming" in out, err
