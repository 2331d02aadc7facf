"""`python -m training.fit` end to end on a small Wikipedia-layout fixture: train, resume, evaluate, rebuild."""

import json

import numpy as np
import pytest

from chtn_tf.metrics.retrieval import mean_average_precision
from chtn_tf.model.config import ExperimentConfig
from chtn_tf.model.persist import load_trained_model
from tests.fixtures_data import WIKIPEDIA_CLASSES as CLASSES
from tests.fixtures_data import make_wikipedia_fixture
from training import fit

@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    make_wikipedia_fixture(root / "data")
    config = ExperimentConfig()
    config.model.branch_widths = (32, 32)
    config.model.shared_widths = (32, 16)
    config.train.batch_size = 16
    config_path = str(root / "small.json")
    config.to_json(config_path)
    run_dir = root / "run"
    argv = ["--dataset", "wikipedia", "--data-dir", str(root / "data"), "--config", config_path,
            "--out", str(run_dir), "--quiet", "--learning-rate", "0.05"]
    assert fit.main(argv + ["--epochs", "2"]) == 0
    first = json.loads((run_dir / "history.json").read_text())
    assert fit.main(argv + ["--epochs", "4"]) == 0  # resumes after epoch 2
    return run_dir, first, root


def test_fit_writes_a_complete_run_folder(fixture_run):
    run_dir, _, _ = fixture_run
    for name in ("config.json", "text_vectorizer.json", "model_info.json", "checkpoints/best/checkpoint", "history.json",
                 "results.json", "pr_curves.png", "training_curves.png"):
        assert (run_dir / name).is_file(), name
    assert any(p.name.startswith("events") for p in (run_dir / "logs").rglob("*")), "no TensorBoard events"
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("map_i2t", "map_t2i", "map_avg", "val_map_avg", "dataset", "backbone", "n_test"):
        assert key in results
    assert results["dataset"] == "wikipedia" and results["backbone"] == "precomputed"
    assert results["n_test"] == 18
    # Separable classes: far above the chance MAP (~1/3).
    assert results["map_avg"] > 0.6


def test_resume_continues_instead_of_restarting(fixture_run):
    run_dir, first, _ = fixture_run
    history = json.loads((run_dir / "history.json").read_text())
    assert len(first["loss"]) == 2
    assert len(history["loss"]) == 4
    assert history["loss"][:2] == first["loss"]
    assert "val_map_avg" in history and "val_pair_fc7" in history


def test_best_checkpoint_is_chosen_by_validation_not_test(fixture_run):
    run_dir, _, _ = fixture_run
    history = json.loads((run_dir / "history.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["val_map_avg"] == pytest.approx(max(history["val_map_avg"]))
    assert results["best_epoch"] == int(np.argmax(history["val_map_avg"])) + 1


def test_run_folder_rebuilds_the_model_and_reproduces_test_map(fixture_run):
    run_dir, _, root = fixture_run
    from chtn_tf.data import load_dataset

    model, info = load_trained_model(str(run_dir))
    dataset = load_dataset("wikipedia", data_dir=str(root / "data"))
    test = dataset.splits["test"]
    image_codes = model.encode_images(test.image_features)
    text_codes = model.encode_texts(test.texts)
    i2t = mean_average_precision(image_codes, test.labels, text_codes, test.labels)
    results = json.loads((run_dir / "results.json").read_text())
    assert i2t == pytest.approx(results["map_i2t"], abs=1e-6)
    assert info["class_names"] == CLASSES


def test_run_writes_examples_page_and_projector_for_a_feature_only_dataset(fixture_run):
    run_dir, _, root = fixture_run
    from chtn_tf.data import load_dataset
    from tests.fixtures_pages import parse_examples_page

    page = parse_examples_page(run_dir / "examples.html")
    assert page["images"] == []  # SIFT features: image ids instead of thumbnails
    model, _ = load_trained_model(str(run_dir))
    test = load_dataset("wikipedia", data_dir=str(root / "data")).splits["test"]
    codes = {"image": model.encode_images(test.image_features), "text": model.encode_texts(test.texts)}
    for section, (query_side, gallery_side) in zip(page["sections"], (("image", "text"), ("text", "image"))):
        assert len(section["queries"]) == 8 and all(len(q["results"]) == 5 for q in section["queries"])
        for query in section["queries"]:
            q = test.ids.index(query["item"]["id"])
            ap = mean_average_precision(codes[query_side][q:q + 1], test.labels[q:q + 1], codes[gallery_side],
                                        test.labels)
            assert float(query["item"]["ap"].split()[1]) == pytest.approx(ap, abs=6e-4)
            if query_side == "image":
                assert query["item"]["noimage"].startswith(f"image {query['item']['id']}")
    projector = (run_dir / "logs" / "projector" / "metadata.tsv").read_text(encoding="utf-8").splitlines()
    assert len(projector) == 1 + 2 * len(test.ids)


def test_config_override_flags_and_ablation(tmp_path):
    args = fit.build_parser().parse_args(["--dataset", "webnews", "--mmd-weight", "0.3", "--ablation", "no-shared"])
    config = fit.resolve_config(args)
    assert config.loss.mmd == 0.3 and config.model.shared_layers is False and config.data.dataset == "webnews"


def test_text_gallery_weight_flag_and_fc9_runs_without_the_text_regression():
    parse = fit.build_parser().parse_args
    assert fit.resolve_config(parse(["--dataset", "webnews"])).model.text_gallery_linear_weight == 0.75
    assert fit.resolve_config(parse(["--dataset", "webnews", "--text-gallery-weight", "0.2"])
                              ).model.text_gallery_linear_weight == 0.2
    fc9 = fit.resolve_config(parse(["--manifest", "pairs.csv", "--representation", "fc9"]))
    assert fc9.model.representation == "fc9" and fc9.model.text_gallery_linear_weight == 0.0
    with pytest.raises(SystemExit):
        parse(["--dataset", "webnews", "--text-gallery-weight", "1.5"])


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert fit.main(["--dataset", "wikipedia", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "wikipedia" in capsys.readouterr().err.lower()
