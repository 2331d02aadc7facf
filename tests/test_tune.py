"""`python -m training.tune`: the hypermodel, a 2-trial search that resumes, the best config into training.fit."""

import json

import keras_tuner
import pytest

from chtn_tf.model.config import ExperimentConfig
from tests.test_fit import make_wikipedia_fixture
from training import fit, tune


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    make_wikipedia_fixture(root / "data")
    config = ExperimentConfig()
    config.data.dataset = "wikipedia"
    config.model.branch_widths = (16, 16)
    config.model.shared_widths = (16, 8)
    config.train.batch_size = 16
    config.train.epochs = 2
    config.loss.mmd = 0.5
    path = str(root / "base.json")
    config.to_json(path)
    return root, path


def test_hypermodel_defaults_are_the_base_config(small_setup):
    root, base_path = small_setup
    from training.hypermodel import CHTNHyperModel
    from training.inputs import prepare_inputs

    base = ExperimentConfig.from_json(base_path).override({"data.data_dir": str(root / "data")})
    hypermodel = CHTNHyperModel(base, prepare_inputs(base, progress=False), epochs=1)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert set(hp.values) == {"mmd_weight", "pair_weight", "learning_rate", "dropout"}
    assert model.config.loss.mmd == 0.5 and model.config.loss.pair == pytest.approx(0.001)
    assert model.config.optimizer.learning_rate == pytest.approx(0.01)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    assert model.built


def test_search_resumes_and_best_config_trains(small_setup, capsys):
    root, base_path = small_setup
    out = str(root / "search")
    argv = ["--config", base_path, "--data-dir", str(root / "data"), "--out", out, "--epochs", "1"]
    assert tune.main(argv + ["--max-trials", "2"]) == 0
    trials = json.loads((root / "search" / "trials.json").read_text())
    assert len(trials) == 2 and all(t["status"] == "COMPLETED" for t in trials)
    assert tune.main(argv + ["--max-trials", "3"]) == 0
    assert "2 trial(s) already there" in capsys.readouterr().out
    trials = json.loads((root / "search" / "trials.json").read_text())
    assert len(trials) == 3
    best = ExperimentConfig.from_json(str(root / "search" / "best_config.json"))
    best_trial = max(trials, key=lambda t: t["val_map_avg"])
    assert best.loss.mmd == pytest.approx(best_trial["hyperparameters"]["mmd_weight"])
    assert best.train.epochs == 2  # the base schedule, not the trials' single epoch
    assert fit.main(["--config", str(root / "search" / "best_config.json"), "--data-dir", str(root / "data"),
                     "--out", str(root / "final"), "--epochs", "1", "--quiet"]) == 0
    results = json.loads((root / "final" / "results.json").read_text())
    assert results["dataset"] == "wikipedia"
