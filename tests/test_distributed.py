"""tf.distribute: strategy choice from TF_CONFIG, the cross-replica objective, MirroredStrategy on two CPU devices,
sharded feature extraction by separate processes.

The multi-worker runs (real processes on 127.0.0.1) are in ``test_cluster.py`` (marked slow).
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from chtn_tf.backbones.feature_cache import batch_plan, extract_features, parse_shard, shard_bounds
from chtn_tf.model.config import ExperimentConfig
from tests.fixtures_cluster import REPO, Processes, base_env, last_model_values, python_module
from tests.fixtures_export import make_manifest, write_tiny_hub_module
from training import fit
from training.strategy import (ClusterSpec, Distribution, StrategyError, check_global_batch, lost_worker_message,
                               lost_workers, read_tf_config)


def config_json(workers, task_type="worker", index=0, chief=None):
    cluster = {"worker": workers}
    if chief:
        cluster["chief"] = chief
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_tf_config_gives_the_cluster_and_this_workers_place():
    assert read_tf_config({}) is None and read_tf_config({"TF_CONFIG": "  "}) is None
    spec = read_tf_config({"TF_CONFIG": config_json(["h:1", "h:2", "h:3"], index=2)})
    assert spec == ClusterSpec(("h:1", "h:2", "h:3"), 2, 0) and spec.num_workers == 3
    # A chief is worker 0, the workers follow it.
    with_chief = read_tf_config({"TF_CONFIG": config_json(["h:2", "h:3"], index=0, chief=["h:1"])})
    assert with_chief.workers == ("h:1", "h:2", "h:3") and with_chief.worker_index == 1
    assert read_tf_config({"TF_CONFIG": config_json(["h:2"], "chief", 0, chief=["h:1"])}).worker_index == 0


@pytest.mark.parametrize("value, expected", [
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    (config_json(["h:1", "h:2"], index=2), "not in the cluster"),
    (config_json(["h:1", "h:2"], task_type="ps"), "not in the cluster"),
    (json.dumps({"cluster": {"worker": ["h:1"], "ps": ["h:9"]}, "task": {"type": "worker", "index": 0}}), "'ps'"),
    (config_json(["h:1", "h:1"]), "twice"),
])
def test_bad_tf_config_is_a_clear_error(value, expected):
    with pytest.raises(StrategyError, match=expected):
        read_tf_config({"TF_CONFIG": value})


def test_fit_refuses_a_strategy_that_contradicts_tf_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", config_json(["127.0.0.1:1", "127.0.0.1:2"]))
    argv = ["--dataset", "wikipedia", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]
    assert fit.main(argv + ["--strategy", "default"]) == 2
    assert "names 2 workers but --strategy is default" in capsys.readouterr().err
    monkeypatch.setenv("TF_CONFIG", "{oops")
    assert fit.main(argv) == 2
    assert "TF_CONFIG is not valid JSON" in capsys.readouterr().err


def test_global_batch_must_split_over_the_replicas():
    class TwoReplicas:
        num_replicas_in_sync = 2

    check_global_batch(64, Distribution(TwoReplicas(), "MirroredStrategy"))
    with pytest.raises(StrategyError, match="--batch-size 63 .* multiple of 2"):
        check_global_batch(63, Distribution(TwoReplicas(), "MirroredStrategy"))


def test_a_lost_peer_is_named_from_the_collective_error():
    """The two ways TensorFlow reports a dead peer (messages as seen on this stack)."""
    cluster = Distribution(None, "MultiWorkerMirroredStrategy", ClusterSpec(("127.0.0.1:5", "127.0.0.1:6"), 0))
    socket_closed = ("Collective ops is aborted by: Socket closed\nAdditional GRPC error information from remote "
                     "target /job:worker/replica:0/task:1 while calling /tensorflow.WorkerService/RecvBuf:")
    heartbeat = ("Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are "
                 "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")
    assert lost_workers(RuntimeError(socket_closed), cluster) == [1]
    assert lost_workers(RuntimeError(heartbeat), cluster) == [1]
    message = lost_worker_message(RuntimeError(heartbeat), cluster)
    assert "lost worker 1 (127.0.0.1:6)" in message and "Restart the same command on every worker" in message
    # Worker 1 naming worker 0; with a chief job the worker indices shift by one.
    worker1 = Distribution(None, "MultiWorkerMirroredStrategy", ClusterSpec(("a:1", "b:2"), 1))
    assert lost_workers(RuntimeError("from /job:worker/replica:0/task:0 while"), worker1) == [0]
    chiefed = Distribution(None, "MultiWorkerMirroredStrategy", ClusterSpec(("a:1", "b:2", "c:3"), 0, 1))
    assert lost_workers(RuntimeError("/job:worker/replica:0/task:1"), chiefed) == [2]


@pytest.mark.parametrize("count, batch, shards",
                         [(100, 32, 2), (64, 32, 2), (5, 2, 3), (3, 32, 2), (0, 8, 2), (97, 8, 5)])
def test_shards_are_whole_batches_that_tile_the_images(count, batch, shards):
    plan = batch_plan(count, batch)
    assert [i for a, b in plan for i in range(a, b)] == list(range(count))
    bounds = [shard_bounds(count, batch, (i, shards)) for i in range(shards)]
    assert bounds[0][0] == 0 and bounds[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    starts = {a for a, _ in plan} | {count}
    assert all(a in starts and b in starts for a, b in bounds)  # never a split batch
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= batch


def test_shard_flag():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_two_processes_extract_half_each_and_merge_to_the_one_process_features(tmp_path):
    """`python -m chtn_tf.backbones.extract --shard I/2` on two processes sharing CHTN_CACHE_DIR."""
    manifest = make_manifest(tmp_path / "data", per_class=12)  # 24 train, 6 val, 6 test images
    backbone = write_tiny_hub_module(tmp_path / "tiny")
    shared = tmp_path / "shared_cache"
    argv = ["--manifest", manifest, "--backbone", backbone, "--source", "none", "--quiet"]
    with Processes(tmp_path / "logs") as procs:
        for i in range(2):
            procs.start(f"shard{i}", python_module("chtn_tf.backbones.extract", *argv, "--shard", f"{i}/2"),
                        base_env(CHTN_CACHE_DIR=shared))
        codes = procs.wait(timeout=240)
        outputs = [procs.log(f"shard{i}") for i in range(2)]
    assert codes == {"shard0": 0, "shard1": 0}, outputs
    # Batches of 32: train is one batch (worker 0), val and test one each (worker 1): 24 + 12 of 36.
    assert "shard 0/2: 24 of 36 images computed here" in outputs[0], outputs[0]
    assert "shard 1/2: 12 of 36 images computed here" in outputs[1], outputs[1]
    merged = sorted((shared / "features").glob("*.npz"))
    assert len(merged) == 3 and not list((shared / "features").glob("*shard*")), merged  # shards cleaned up

    # Reference: one process, its own cache.
    from chtn_tf.backbones import BackboneSpec
    from chtn_tf.data import load_dataset

    dataset = load_dataset(manifest=manifest)
    spec = BackboneSpec(backbone, backbone)
    for name, split in dataset.splits.items():
        single = extract_features(split.image_paths, spec, cache_dir=str(tmp_path / "own_cache"), progress=False)
        from_shards = extract_features(split.image_paths, spec, cache_dir=str(shared / "features"), progress=False)
        assert not single.from_cache and from_shards.from_cache
        assert single.features.tobytes() == from_shards.features.tobytes(), name  # bit for bit


def test_sharded_extraction_splits_batches_and_times_out_on_a_missing_shard(tmp_path):
    """In one process: shard 1 of 2 computed, shard 0 never comes: a clear TimeoutError, the finished part kept."""
    from chtn_tf.backbones import BackboneSpec

    backbone = write_tiny_hub_module(tmp_path / "tiny")
    manifest = make_manifest(tmp_path / "data", per_class=8)  # 12 train images: 6 batches of 2
    from chtn_tf.data import load_dataset

    paths = load_dataset(manifest=manifest).splits["train"].image_paths
    spec = BackboneSpec(backbone, backbone)
    with pytest.raises(TimeoutError, match=r"shard 1 of 2 .* is worker 0 running"):
        extract_features(paths, spec, cache_dir=str(tmp_path / "c"), progress=False, batch_size=2, shard=(1, 2),
                         stall_seconds=1.0)
    parts = list((tmp_path / "c").glob("*.shard-1-of-2.npz"))
    assert len(parts) == 1
    # Worker 0 arrives later: it computes its half, finds worker 1's, and both halves give the full features.
    merged = extract_features(paths, spec, cache_dir=str(tmp_path / "c"), progress=False, batch_size=2, shard=(0, 2))
    assert merged.computed == shard_bounds(len(paths), 2, (0, 2))[1]
    single = extract_features(paths, spec, cache_dir=str(tmp_path / "single"), progress=False, batch_size=2)
    assert merged.features.tobytes() == single.features.tobytes()


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from chtn_tf.model import cross_replica
    from training import fit
    from training.strategy import select_strategy

    # One strategy per process (two MirroredStrategy objects reuse collective instance keys).
    distribution = select_strategy("mirrored")
    strategy = distribution.strategy
    assert distribution.num_replicas == 2, distribution.describe()

    # The reduction rule by hand: two replicas with 3 and 1 examples.
    values = [tf.constant([1.0, 2.0, 6.0]), tf.constant([7.0])]
    mmd = [tf.constant(0.3), tf.constant(0.9)]

    def per_replica():
        r = tf.distribute.get_replica_context().replica_id_in_sync_group
        x = values[r]
        terms = {name: tf.constant(0.0) for name in ("source_ce", "text_ce", "pair_fc6", "pair_fc7")}
        terms.update(image_ce=tf.reduce_mean(x), mmd_fc6=mmd[r], mmd_fc7=2 * mmd[r])
        batch = {"target": {"label": tf.zeros_like(x, tf.int32)}, "source": {"label": tf.zeros([2], tf.int32)}}
        shares = cross_replica.replica_shares(terms, batch)
        return cross_replica.global_values(shares["image_ce"] + shares["mmd_fc6"], shares)

    loss, terms = strategy.run(per_replica)
    local = lambda v: [float(t) for t in strategy.experimental_local_results(v)]
    print("HAND", json.dumps({"image_ce": local(terms["image_ce"]), "mmd_fc6": local(terms["mmd_fc6"]),
                              "mmd_fc7": local(terms["mmd_fc7"]), "loss": local(loss)}), flush=True)

    # What `training.fit --strategy mirrored` runs, on this strategy.
    from training.inputs import prepare_inputs
    from training.run import train_and_evaluate

    args = fit.build_parser().parse_args(sys.argv[1:])
    config = fit.resolve_config(args)
    train_and_evaluate(config, prepare_inputs(config, progress=False), args.out, distribution=distribution)
""")


@pytest.fixture(scope="module")
def equivalence_setup(tmp_path_factory):
    """A manifest of coloured images, a tiny backbone, and a config whose every term is per-example."""
    root = tmp_path_factory.mktemp("mirrored")
    manifest = make_manifest(root / "data", per_class=16)  # 36 train, 6 val, 6 test pairs
    backbone = write_tiny_hub_module(root / "tiny")
    config = ExperimentConfig()
    config.model.branch_widths = (32, 32)
    config.model.shared_widths = (32, 16)
    config.model.dropout = 0.0
    config.loss.pair = 0.01  # per-example too (a mean over pairs)
    config.train.batch_size = 8
    config.optimizer.learning_rate = 0.05
    config.to_json(str(root / "config.json"))
    argv = ["--manifest", manifest, "--backbone", backbone, "--source", "none", "--config", str(root / "config.json"),
            "--epochs", "3", "--quiet"]
    return root, argv


@pytest.mark.slow  # ~30-60 s on 2 cores: in `pytest -m slow` (CI runs both)
def test_mirrored_over_two_cpu_devices_trains_like_one_device(equivalence_setup, monkeypatch):
    root, argv = equivalence_setup
    monkeypatch.setenv("CHTN_CACHE_DIR", str(root / "cache"))
    mirrored = subprocess.run([sys.executable, "-c", MIRRORED, *argv, "--out", str(root / "mirrored")],
                              env=base_env(CHTN_CACHE_DIR=root / "cache"), cwd=str(REPO), capture_output=True,
                              text=True, timeout=600)
    assert mirrored.returncode == 0, mirrored.stdout[-3000:] + mirrored.stderr[-3000:]
    hand = json.loads(next(line for line in mirrored.stdout.splitlines() if line.startswith("HAND "))[5:])
    # Per-example: the mean over all 4 examples (not the mean of the replica means, 5); MMD: the replicas' mean.
    assert hand["image_ce"] == pytest.approx([4.0, 4.0]) and hand["mmd_fc6"] == pytest.approx([0.6, 0.6])
    assert hand["mmd_fc7"] == pytest.approx([1.2, 1.2]) and hand["loss"] == pytest.approx([4.6, 4.6])

    assert fit.main(argv + ["--out", str(root / "single")]) == 0
    results = json.loads((root / "mirrored" / "results.json").read_text())
    assert (results["strategy"], results["num_workers"], results["num_replicas"]) == ("MirroredStrategy", 1, 2)
    single, replicated = last_model_values(root / "single"), last_model_values(root / "mirrored")
    assert single.keys() == replicated.keys() and len(single) > 20
    for name in single:
        np.testing.assert_allclose(replicated[name], single[name], atol=1e-4, rtol=0, err_msg=name)
    history = [json.loads((root / run / "history.json").read_text()) for run in ("single", "mirrored")]
    np.testing.assert_allclose(history[1]["loss"], history[0]["loss"], rtol=1e-4)
    np.testing.assert_allclose(history[1]["val_loss"], history[0]["val_loss"], rtol=1e-4)


def test_tuning_role_comes_from_keras_tuners_variables():
    from training.tune import tuning_role

    assert tuning_role({}) == "single"
    env = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}
    assert tuning_role({**env, "KERASTUNER_TUNER_ID": "chief"}) == "chief"
    assert tuning_role({**env, "KERASTUNER_TUNER_ID": "tuner1"}) == "worker"
    with pytest.raises(ValueError, match="KERASTUNER_TUNER_ID"):
        tuning_role(env)
    with pytest.raises(ValueError, match="port number"):
        tuning_role({**env, "KERASTUNER_ORACLE_PORT": "x", "KERASTUNER_TUNER_ID": "tuner0"})


def test_a_worker_notices_its_tuning_chief_is_gone():
    import socket
    import threading

    from training.tune import ChiefWatch

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    lost = threading.Event()
    messages = []
    watch = ChiefWatch("127.0.0.1", server.getsockname()[1], grace=0.5, interval=0.1,
                       on_lost=lambda message: (messages.append(message), lost.set()))
    watch.start()
    assert not lost.wait(0.6)  # the chief answers: nothing happens
    server.close()
    assert lost.wait(10) and "lost the tuning chief at 127.0.0.1" in messages[0]
    watch.stop()


def test_a_worker_reads_the_chiefs_checkpoint_once_at_resume(tmp_path):
    """A worker restores from the chief's checkpoints/last, which the chief replaces after the next epoch:
    everything must be read at restore time (TensorFlow restores a checkpoint's save counter lazily)."""
    import shutil

    import tensorflow as tf

    from chtn_tf.model.persist import build_model_from_run
    from tests.fixtures_data import make_wikipedia_fixture
    from training import checkpoint

    make_wikipedia_fixture(tmp_path / "data")
    small = ExperimentConfig()
    small.model.branch_widths, small.model.shared_widths = (16, 16), (16, 8)
    small.to_json(str(tmp_path / "small.json"))
    run = tmp_path / "run"
    assert fit.main(["--dataset", "wikipedia", "--data-dir", str(tmp_path / "data"), "--config",
                     str(tmp_path / "small.json"), "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    model, _ = build_model_from_run(str(run))
    model.compile(optimizer=tf.keras.optimizers.SGD(momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    worker = checkpoint.RunCheckpoints(str(run), model, writer=False)
    state = worker.restore_last()
    assert state["epoch"] == 0
    shutil.rmtree(run / "checkpoints" / "last")  # the chief has moved on to its next checkpoint
    worker.save_last(1, state)  # the worker's own (throw-away) save must not need the old file


@pytest.mark.slow  # ~30-60 s on 2 cores: in `pytest -m slow` (CI runs both)
def test_a_search_trains_its_trials_under_a_mirrored_strategy(tmp_path, capsys):
    """`training.tune --strategy mirrored`: keras-tuner's callbacks through the replica loop give the trial the
    validation MAP the default strategy gives (one CPU device here: one replica)."""
    from tests.fixtures_data import make_wikipedia_fixture
    from training import tune

    make_wikipedia_fixture(tmp_path / "data")
    small = ExperimentConfig()
    small.data.dataset, small.data.data_dir = "wikipedia", str(tmp_path / "data")
    small.model.branch_widths, small.model.shared_widths = (16, 16), (16, 8)
    small.model.dropout, small.train.batch_size = 0.0, 16
    small.to_json(str(tmp_path / "base.json"))
    scores = {}
    for strategy in ("default", "mirrored"):
        out = tmp_path / strategy
        argv = ["--config", str(tmp_path / "base.json"), "--out", str(out), "--epochs", "2", "--max-trials", "1",
                "--strategy", strategy]
        assert tune.main(argv) == 0
        trials = json.loads((out / "trials.json").read_text())["trials"]
        assert [t["status"] for t in trials] == ["COMPLETED"]
        scores[strategy] = trials[0]["val_map_avg"]
    assert scores["mirrored"] == pytest.approx(scores["default"], abs=1e-4)


def test_a_worker_that_is_not_the_chief_writes_nothing_and_needs_the_shared_run_folder(tmp_path, monkeypatch):
    """Worker 1 of 2 (played in one process on the default strategy): it trains, writes nothing in --out and
    nothing left in its temporary folder, and says the run folder must be shared when the chief's is missing."""
    import tempfile

    import tensorflow as tf

    from tests.fixtures_data import make_wikipedia_fixture
    from training.inputs import prepare_inputs
    from training.run import train_and_evaluate

    make_wikipedia_fixture(tmp_path / "data")
    config = ExperimentConfig()
    config.data.dataset, config.data.data_dir = "wikipedia", str(tmp_path / "data")
    config.model.branch_widths, config.model.shared_widths = (16, 16), (16, 8)
    config.train.epochs = 2
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    made = []
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(mkdtemp(*a, **k)) or made[-1])
    worker1 = Distribution(tf.distribute.get_strategy(), "MultiWorkerMirroredStrategy",
                           ClusterSpec(("127.0.0.1:1", "127.0.0.1:2"), 1))
    run = tmp_path / "run"
    with pytest.raises(StrategyError, match="must be a folder every worker shares"):
        train_and_evaluate(config, prepare_inputs(config, progress=False), str(run), distribution=worker1)
    assert not run.exists() or not any(run.rglob("*"))
    # Its checkpoints went to throw-away folders (last every epoch, best at least once), all gone now.
    assert len([m for m in made if "chtn-worker" in m]) >= 3 and not list(scratch.glob("chtn-worker*"))
