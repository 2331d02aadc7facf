"""`python -m training.tune`: the hypermodel's space, a 2-trial search that resumes, the best config into training.fit."""

import dataclasses
import json

import keras_tuner
import numpy as np
import pytest

from chtn_tf.model.config import ExperimentConfig
from tests.fixtures_data import make_wikipedia_fixture
from training import fit, tune


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    make_wikipedia_fixture(root / "data")
    config = ExperimentConfig()
    config.data.dataset = "wikipedia"
    config.data.data_dir = str(root / "data")
    config.model.branch_widths = (16, 16)
    config.model.shared_widths = (16, 8)
    config.model.dropout = 0.2
    config.train.batch_size = 16
    config.train.epochs = 7
    config.loss.mmd = 0.5
    config.loss.pair = 0.002
    config.optimizer.learning_rate = 0.02
    path = str(root / "base.json")
    config.to_json(path)
    return root, path


@pytest.fixture(scope="module")
def prepared(small_setup):
    from training.inputs import prepare_inputs

    _, base_path = small_setup
    base = ExperimentConfig.from_json(base_path)
    return base, prepare_inputs(base, progress=False)


def test_hypermodel_defaults_are_the_base_config(prepared):
    from training.hypermodel import CHTNHyperModel

    base, inputs = prepared
    hypermodel = CHTNHyperModel(base, inputs, epochs=3)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    # Features-only Wikipedia has no source domain, so the MMD weight would do nothing and is not searched.
    assert hp.values == {"pair_weight": 0.002, "learning_rate": 0.02, "dropout": 0.2}
    assert model.built and not model.use_source
    assert model.config.loss.pair == 0.002 and model.config.model.dropout == 0.2
    assert model.config.optimizer.learning_rate == 0.02
    assert float(model.optimizer.learning_rate) == pytest.approx(0.02)
    assert model.config.train.epochs == 3
    # A sampled value reaches the model, the rest of the base config stays.
    hp.values["learning_rate"] = 0.05
    model = hypermodel.build(hp)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    assert model.config.model.branch_widths == (16, 16)
    # The search never sees the test split.
    assert set(hypermodel.inputs.features) == set(hypermodel.inputs.dataset.splits) == {"train", "val"}
    assert "test" in inputs.features


def test_mmd_weight_is_searched_when_there_is_a_source_domain(prepared):
    from training.hypermodel import CHTNHyperModel

    base, inputs = prepared
    rng = np.random.default_rng(0)
    with_source = dataclasses.replace(inputs, source_features=rng.normal(size=(40, 16)).astype(np.float32),
                                      source_labels=rng.integers(0, 4, 40).astype(np.int32),
                                      source_class_names=["a", "b", "c", "d"])
    hp = keras_tuner.HyperParameters()
    model = CHTNHyperModel(base, with_source, epochs=1).build(hp)
    assert hp.values["mmd_weight"] == 0.5 and model.config.loss.mmd == 0.5 and model.use_source
    space = {p.name: p for p in hp.space}
    assert (space["mmd_weight"].min_value, space["mmd_weight"].max_value, space["mmd_weight"].sampling) == (0.01, 10.0, "log")
    assert space["pair_weight"].sampling == space["learning_rate"].sampling == "log"


@pytest.mark.slow  # ~30-60 s on 2 cores: in `pytest -m slow` (CI runs both)
def test_search_resumes_and_best_config_retrains_the_best_trial(small_setup, capsys):
    root, base_path = small_setup
    out = root / "search"
    argv = ["--config", base_path, "--out", str(out), "--epochs", "2"]
    assert tune.main(argv + ["--max-trials", "2"]) == 0
    assert capsys.readouterr().out.count("Running Trial") == 2
    summary = json.loads((out / "trials.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 2 and all(t["status"] == "COMPLETED" for t in trials)
    first = next(t for t in trials if t["number"] == 1)
    assert first["hyperparameters"] == {"pair_weight": 0.002, "learning_rate": 0.02, "dropout": 0.2}
    assert all(t["val_map_avg"] == pytest.approx((t["val_map_i2t"] + t["val_map_t2i"]) / 2) for t in trials)
    # Only the best trial keeps its weights.
    kept = sorted(p.parent.name for p in (out / "search").glob("trial_*/checkpoint.weights.h5"))
    assert kept == [f"trial_{summary['best_trial']}"]

    assert tune.main(argv + ["--max-trials", "3"]) == 0
    printed = capsys.readouterr().out
    assert "2 trial(s) already there" in printed
    assert printed.count("Running Trial") == 1  # one new trial, not a fresh search
    summary = json.loads((out / "trials.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials)
    best_trial = max(trials, key=lambda t: t["val_map_avg"])
    assert summary["best_trial"] == best_trial["trial_id"]

    best = ExperimentConfig.from_json(str(out / "best_config.json"))
    assert best.loss.pair == pytest.approx(best_trial["hyperparameters"]["pair_weight"])
    assert best.optimizer.learning_rate == pytest.approx(best_trial["hyperparameters"]["learning_rate"])
    assert best.train.epochs == 2  # the trials' schedule, so retraining reproduces the trial
    assert best.model.branch_widths == (16, 16) and best.loss.mmd == 0.5

    # Other settings on the same folder would mix two searches: refused.
    assert tune.main(["--config", base_path, "--out", str(out), "--epochs", "3", "--max-trials", "4"]) == 2
    assert "epochs" in capsys.readouterr().err

    assert fit.main(["--config", str(out / "best_config.json"), "--out", str(root / "final"), "--quiet"]) == 0
    results = json.loads((root / "final" / "results.json").read_text())
    assert results["epochs_run"] == 2
    # Same config, seed and data order: training.fit lands on the best trial's validation MAP.
    assert results["val_map_avg"] == pytest.approx(best_trial["val_map_avg"], abs=1e-4)


def test_every_trial_failing_exits_nonzero(small_setup, monkeypatch, capsys):
    root, base_path = small_setup

    def broken_fit(*args, **kwargs):
        raise FloatingPointError("loss became NaN")

    monkeypatch.setattr("training.hypermodel.fit_model", broken_fit)
    out = root / "failing"
    assert tune.main(["--config", base_path, "--out", str(out), "--epochs", "1", "--max-trials", "2"]) == 1
    assert "every trial failed" in capsys.readouterr().err
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["FAILED", "FAILED"]
    assert "loss became NaN" in trials[0]["message"]
    assert not (out / "best_config.json").exists()
