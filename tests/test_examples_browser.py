"""The examples page of a small real run, opened in a real headless Chromium (Debian's, driven by Selenium).

The run trains on a tiny manifest of real Web News photos and texts (3 classes, 30 train / 18 test pairs,
3 epochs). The test loads ``examples.html`` from disk as a user would, takes a screenshot, checks that every
embedded image decoded (natural width > 0) and that each result's class and ✓/✗ mark agree with the labels
the manifest gives its id. Needs ``chromium`` and ``chromedriver`` (``bash .ci/setup`` installs them) and the
real data (``CHTN_DATA_DIR``).
"""

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from chtn_tf.model.config import ExperimentConfig
from training import fit

CLASSES_USED = 3
TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 6
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000")


def _browser_paths():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium / chromedriver not installed: run `bash .ci/setup` (installs Debian's chromium and "
                    "chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def webnews_run(real_data_dir, tmp_path_factory):
    """A 3-epoch run on a manifest of real Web News pairs; returns (run folder, {pair id: class name})."""
    from chtn_tf.data import load_dataset

    webnews = load_dataset("webnews", data_dir=str(real_data_dir))
    root = tmp_path_factory.mktemp("webnews-examples")
    rows, label_of = [], {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        data = webnews.splits[split]
        for label in range(CLASSES_USED):
            for i in np.flatnonzero(data.labels == label)[:per_class]:
                name = webnews.class_names[label]
                rows.append([data.image_paths[i], " ".join(data.texts[i].split()), name, split, data.ids[i]])
                label_of[data.ids[i]] = name
    manifest = root / "webnews-small.csv"
    with open(manifest, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label", "split", "id"]] + rows)
    config = ExperimentConfig()
    config.model.branch_widths = (64, 64)
    config.model.shared_widths = (64, 32)
    config.train.batch_size = 8
    config_path = root / "small.json"
    config.to_json(str(config_path))
    run_dir = root / "run"
    assert fit.main(["--manifest", str(manifest), "--config", str(config_path), "--source", "none",
                     "--backbone", "efficientnet-lite0", "--epochs", "3", "--out", str(run_dir), "--quiet"]) == 0
    return run_dir, label_of


_READ_PAGE = """
const text = (root, selector) => { const e = root.querySelector(selector); return e ? e.textContent : null; };
return {
  images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
  queries: Array.from(document.querySelectorAll('article.query')).map(a => ({
    modality: a.classList.contains('image-query') ? 'image' : 'text',
    id: text(a, '.query-item .id'), label: text(a, '.query-item .label'),
    results: Array.from(a.querySelectorAll('li.result')).map(r => ({
      id: text(r, '.id'), label: text(r, '.label'), mark: text(r, '.mark'),
      border: getComputedStyle(r).borderTopColor, images: r.querySelectorAll('img').length}))}))
};
"""


def test_examples_page_in_headless_chromium(webnews_run, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    run_dir, label_of = webnews_run
    chromium, chromedriver = _browser_paths()
    page = run_dir / "examples.html"
    assert page.stat().st_size < 5 * 1024 * 1024

    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # Debian's Chromium; Selenium Manager is never asked to fetch one
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={tmp_path / 'profile'}",):
        options.add_argument(flag)
    service = Service(executable_path=chromedriver)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(30)
        driver.get(page.as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        screenshot = driver.get_screenshot_as_png()
        shown = driver.execute_script(_READ_PAGE)
    finally:
        driver.quit()  # ends Chromium and chromedriver
    assert service.process is None or service.process.poll() is not None, "chromedriver still running"

    (tmp_path / "examples.png").write_bytes(screenshot)
    image = Image.open(io.BytesIO(screenshot))
    assert image.format == "PNG" and image.width >= 1000
    assert np.asarray(image.convert("L")).std() > 10  # not a blank page

    # 8 image queries + 8 text queries x 5 results: 8 + 40 thumbnails, every one decoded by the browser.
    assert len(shown["images"]) == 48
    assert all(complete and width > 0 and height > 0 for complete, width, height in shown["images"]), shown["images"]
    queries = shown["queries"]
    assert [q["modality"] for q in queries] == ["image"] * 8 + ["text"] * 8
    assert len({q["label"] for q in queries[:8]}) == CLASSES_USED  # spread over the classes
    marks = []
    for query in queries:
        assert query["label"] == label_of[query["id"]]
        assert len(query["results"]) == 5
        for result in query["results"]:
            right = label_of[result["id"]] == label_of[query["id"]]
            assert result["label"] == label_of[result["id"]]
            assert result["mark"] == ("✓" if right else "✗"), (query["id"], result)
            assert result["border"] == ("rgb(46, 155, 79)" if right else "rgb(208, 69, 58)")
            assert result["images"] == (1 if query["modality"] == "text" else 0)
            marks.append(right)
    assert any(marks)  # a trained model retrieves some of the query's class

    results = json.loads((run_dir / "results.json").read_text())
    assert results["n_test"] == CLASSES_USED * TEST_PER_CLASS
    projector = run_dir / "logs" / "projector"
    assert (projector / "sprite.jpg").is_file()
    assert len((projector / "metadata.tsv").read_text(encoding="utf-8").splitlines()) == 1 + 2 * results["n_test"]
