"""Multi-worker training with real worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy, TF_CONFIG).

Slow (each worker imports TensorFlow and joins a gRPC cluster): ``pytest -m slow``; ``.ci/run`` runs them.
"""

import json

import numpy as np
import pytest

from chtn_tf.model.config import ExperimentConfig
from tests.fixtures_cluster import last_model_values, python_module, run_cluster
from tests.fixtures_export import make_manifest, write_tiny_hub_module
from training import fit

pytestmark = pytest.mark.slow


def per_example_config(path) -> str:
    """Every term per-example (no source domain, so no MMD; no dropout): replicas must train like one process."""
    config = ExperimentConfig()
    config.model.branch_widths = (32, 32)
    config.model.shared_widths = (32, 16)
    config.model.dropout = 0.0
    config.loss.pair = 0.01
    config.train.batch_size = 8
    config.optimizer.learning_rate = 0.05
    config.to_json(str(path))
    return str(path)


def printed_digest(output: str) -> str:
    line = next(line for line in output.splitlines() if "trained weights sha256" in line)
    return line.split("sha256 ")[1].split()[0]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """``python -m training.fit`` on 2 workers and in one process: same command, data, seed."""
    root = tmp_path_factory.mktemp("cluster")
    manifest = make_manifest(root / "data", per_class=16)  # 36 train, 6 val, 6 test pairs
    backbone = write_tiny_hub_module(root / "tiny")
    argv = ["--manifest", manifest, "--backbone", backbone, "--source", "none",
            "--config", per_example_config(root / "config.json"), "--epochs", "3", "--quiet"]
    temp = root / "tmp"
    temp.mkdir()
    codes, outputs = run_cluster(python_module("training.fit", *argv, "--out", root / "run2"), 2, logs=root / "logs",
                                 timeout=900, env={"CHTN_CACHE_DIR": root / "cache", "TMPDIR": temp})
    assert codes == [0, 0], "\n\n".join(o[-4000:] for o in outputs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHTN_CACHE_DIR", str(root / "cache"))
        assert fit.main(argv + ["--out", str(root / "run1")]) == 0
    return {"root": root, "outputs": outputs, "temp": temp}


def test_two_workers_finish_and_record_the_strategy(two_workers):
    root, outputs = two_workers["root"], two_workers["outputs"]
    results = json.loads((root / "run2" / "results.json").read_text())
    assert results["strategy"] == "MultiWorkerMirroredStrategy"
    assert results["num_workers"] == 2 and results["num_replicas"] == 2
    single = json.loads((root / "run1" / "results.json").read_text())
    assert (single["strategy"], single["num_workers"], single["num_replicas"]) == ("default", 1, 1)
    assert abs(results["map_avg"] - single["map_avg"]) <= 0.03
    assert "worker 0 of 2 (127.0.0.1:" in outputs[0] and ", chief)" in outputs[0]
    assert "worker 1 of 2" in outputs[1] and "run folder (written by worker 0)" in outputs[1]


def test_the_workers_end_with_identical_weights(two_workers):
    root, outputs = two_workers["root"], two_workers["outputs"]
    digests = [printed_digest(output) for output in outputs]
    assert digests[0] == digests[1]
    # So both evaluate the same test numbers (the chief alone writes them).
    tables = [output[output.index("\ndataset "):].splitlines()[1:3] for output in outputs]
    assert tables[0] == tables[1] and "I->T" in tables[0][0]
    assert json.loads((root / "run2" / "results.json").read_text())["weights_sha256"] == digests[0]


def test_two_workers_with_global_batch_b_train_like_one_process_with_batch_b(two_workers):
    root = two_workers["root"]
    single, cluster = last_model_values(root / "run1"), last_model_values(root / "run2")
    assert single.keys() == cluster.keys() and len(single) > 20
    for name in single:
        np.testing.assert_allclose(cluster[name], single[name], atol=1e-4, rtol=0, err_msg=name)
    history = [json.loads((root / run / "history.json").read_text()) for run in ("run1", "run2")]
    np.testing.assert_allclose(history[1]["loss"], history[0]["loss"], rtol=1e-4)
    # Validation MAP is computed on every worker from identical weights: the chief's equals one process's.
    np.testing.assert_allclose(history[1]["val_map_avg"], history[0]["val_map_avg"], atol=1e-6)


def test_only_the_chief_writes_the_run_folder(two_workers):
    root, temp = two_workers["root"], two_workers["temp"]

    def files(run):
        return {str(p.relative_to(root / run)) for p in (root / run).rglob("*")
                if "events.out.tfevents" not in p.name}  # TensorBoard names its files by host, pid and time

    # The run folder of 2 workers holds exactly what a one-process run writes: nothing more from worker 1.
    assert files("run2") == files("run1")
    assert {"results.json", "history.json", "config.json", "examples.html"} <= files("run2")
    assert not list(temp.glob("chtn-worker*"))  # worker 1's private folders (under TMPDIR) are gone


def test_each_worker_extracts_half_the_images(two_workers):
    outputs = two_workers["outputs"]
    counts = []
    for i, output in enumerate(outputs):
        line = next(line for line in output.splitlines() if f"worker {i} of 2 ran" in line)
        counts.append(int(line.split(" ran ")[1].split()[0]))
    # 48 images, batches of 32 per set: train 2 batches (32 + 4), val 1, test 1; the 4 batches are dealt out
    # 2 and 2: worker 0 takes the train batches, worker 1 val and test.
    assert counts == [36, 12] and "of 48 images" in outputs[0]


def test_distributed_tuning_chief_and_two_workers(tmp_path, real_data_dir):
    """keras-tuner's chief/worker protocol: the chief serves the oracle, 2 workers split the 4 trials."""
    from tests.fixtures_cluster import Processes, base_env, free_ports

    out = tmp_path / "search"
    argv = python_module("training.tune", "--dataset", "wikipedia", "--max-trials", 4, "--epochs", 2, "--out", out)
    port = free_ports(1)[0]
    oracle = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port, "CHTN_DATA_DIR": real_data_dir}
    names = ["chief", "tuner0", "tuner1"]
    with Processes(tmp_path / "logs") as procs:
        for name in names:
            procs.start(name, argv, base_env(**oracle, KERASTUNER_TUNER_ID=name))
        codes = procs.wait(timeout=1200)
        outputs = {name: procs.log(name) for name in names}
    assert codes == {name: 0 for name in names}, "\n\n".join(o[-4000:] for o in outputs.values())

    summary = json.loads((out / "trials.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["COMPLETED"] * 4
    ran = {}
    for worker in ("tuner0", "tuner1"):
        line = next(line for line in outputs[worker].splitlines() if line.startswith(f"{worker} ran "))
        ran[worker] = [int(n) for n in line.split(": ")[1].split(".")[0].split(", ")] if ": " in line else []
    # Every trial ran exactly once, on one worker; the chief ran none.
    assert sorted(ran["tuner0"] + ran["tuner1"]) == [1, 2, 3, 4], ran
    assert ": val MAP" not in outputs["chief"] and "serves the oracle" in outputs["chief"]
    assert all(outputs[w].count("  epoch 2: val MAP") == len(ran[w]) for w in ran)
    assert not (out / "trials.json").stat().st_size == 0 and (out / "best_config.json").is_file()
    kept = sorted(p.parent.name for p in (out / "search").glob("trial_*/checkpoint.weights.h5"))
    assert kept == [f"trial_{summary['best_trial']}"]  # the chief pruned the others

    best = max(summary["trials"], key=lambda t: t["val_map_avg"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHTN_DATA_DIR", str(real_data_dir))
        assert fit.main(["--config", str(out / "best_config.json"), "--out", str(tmp_path / "final"), "--quiet"]) == 0
    results = json.loads((tmp_path / "final" / "results.json").read_text())
    assert results["val_map_avg"] == pytest.approx(best["val_map_avg"], abs=1e-4)


def test_a_killed_worker_stops_the_other_and_both_resume(tmp_path):
    """SIGKILL worker 1 after epoch 1: worker 0 stops within 120 s naming it; re-running both resumes and ends
    with the weights of an uninterrupted 2-worker run."""
    import signal
    import time

    from tests.fixtures_cluster import Processes, base_env, free_ports, tf_config

    manifest = make_manifest(tmp_path / "data", per_class=160)  # 468 train pairs: ~58 steps an epoch
    backbone = write_tiny_hub_module(tmp_path / "tiny")
    argv = ["--manifest", manifest, "--backbone", backbone, "--source", "none",
            "--config", per_example_config(tmp_path / "config.json"), "--epochs", "3", "--quiet"]
    env = {"CHTN_CACHE_DIR": tmp_path / "cache"}
    codes, outputs = run_cluster(python_module("training.fit", *argv, "--out", tmp_path / "whole"), 2,
                                 logs=tmp_path / "logs_whole", timeout=900, env=env)
    assert codes == [0, 0], "\n\n".join(o[-4000:] for o in outputs)

    command = python_module("training.fit", *argv, "--out", tmp_path / "run")
    ports = free_ports(2)
    with Processes(tmp_path / "logs_killed") as procs:
        for i in range(2):
            procs.start(f"worker{i}", command, base_env(**env, TF_CONFIG=tf_config(ports, i)))
        procs.wait_for_text("worker1", "epoch 1: val MAP", timeout=600)
        procs.kill("worker1", signal.SIGKILL)
        killed = time.monotonic()
        codes = procs.wait(timeout=150, names=["worker0"])
        waited = time.monotonic() - killed
        survivor = procs.log("worker0")
    assert codes["worker0"] not in (0, None) and waited < 120, (waited, survivor[-3000:])
    assert "error: lost worker 1 (127.0.0.1:" in survivor, survivor[-3000:]
    assert "Traceback" not in survivor.split("error: lost worker 1")[1]

    codes, outputs = run_cluster(command, 2, logs=tmp_path / "logs_resumed", timeout=900, env=env)
    assert codes == [0, 0], "\n\n".join(o[-4000:] for o in outputs)
    for output in outputs:
        assert "Resuming" in output and "after epoch 1 " in output, output[-3000:]
    whole, resumed = last_model_values(tmp_path / "whole"), last_model_values(tmp_path / "run")
    for name in whole:
        np.testing.assert_allclose(resumed[name], whole[name], atol=1e-6, rtol=0, err_msg=name)
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("whole", "run")]
    assert results[1]["map_avg"] == pytest.approx(results[0]["map_avg"], abs=1e-6)
    assert results[1]["epochs_run"] == 3
