"""Pascal Sentences (Rashtchian et al., 2010): 1,000 images x 5 sentences, 20 classes x 50.

Layout read (``<data dir>/pascal_sentences/``, the official one)::

    <category>/<image>.jpg                 the images, e.g. aeroplane/2008_000716.jpg
    sentence/<category>/<image>.txt        its sentences, one a line
    pascal_sentences.json                  (optional) {"2008_000716.jpg": {"category": ..., "captions": [5]}}

The image list comes from ``pascal_sentences.json`` when present, else from the ``sentence/`` files. An image's
sentences come from its ``sentence/`` file when present, else from the json. Split: 800 / 100 / 100 images,
stratified (40 / 5 / 5 per class) and seeded, always by image, so no image is in two splits.

How the 5 sentences are used (``sentences``):
    ``"join"`` (default): one pair per image, its text the sentences joined by a space. Retrieval is then
        evaluated with one item per image, as is usual for this dataset.
    ``"each"``: every sentence its own pair sharing the image (ids ``<image>#<k>``), in every split; the splits
        are still drawn by image.

The images are not shipped with the captions: ``python -m chtn_tf.data.pascal --download [--data-dir DIR]``
fetches them from the official site (:func:`download_pascal`).
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import os
import pathlib
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

import numpy as np

from chtn_tf.atomic import write_text_atomic
from chtn_tf.data.images import check_image, drop_bad_images
from chtn_tf.data.locations import ENV_VAR, data_dir_source, resolve_data_dir
from chtn_tf.data.records import to_split
from chtn_tf.data.splits import assemble, stratified_split
from chtn_tf.data.types import CrossModalDataset, DatasetError, Problem

OFFICIAL_URL = "http://vision.cs.uiuc.edu/pascal-sentences/"
FOLDER = "pascal_sentences"
CAPTIONS_JSON = "pascal_sentences.json"
CHECKSUMS = "SHA256SUMS"
DOWNLOAD_COMMAND = "python -m chtn_tf.data.pascal --download [--data-dir DIR]"
LAYOUT = (f"{FOLDER}/<category>/<image>.jpg (e.g. {FOLDER}/aeroplane/2008_000716.jpg) with "
          f"{FOLDER}/sentence/<category>/<image>.txt or {FOLDER}/{CAPTIONS_JSON}")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def _read_catalogue(root: pathlib.Path) -> dict:
    """``{image file name: (category, [sentences])}`` from the json and/or the sentence files."""
    catalogue = {}
    json_path = root / CAPTIONS_JSON
    if json_path.is_file():
        try:
            raw = json.loads(json_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DatasetError(f"{json_path} is not valid UTF-8 JSON ({err}); restore it or delete it to use "
                               f"the sentence/ files") from err
        for image, entry in raw.items():
            if not isinstance(entry, dict) or "category" not in entry or "captions" not in entry:
                raise DatasetError(f"{json_path}: entry {image!r} lacks 'category' or 'captions'; expected "
                                   f'{{"<image>.jpg": {{"category": ..., "captions": [...]}}}}')
            catalogue[image] = (entry["category"], [str(c) for c in entry["captions"]])
    sentence_dir = root / "sentence"
    if sentence_dir.is_dir():
        for path in sorted(sentence_dir.glob("*/*.txt")):
            image = path.stem + ".jpg"
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
            catalogue[image] = (path.parent.name, [ln for ln in lines if ln])
    return catalogue


def missing_images_message(root: pathlib.Path, how: str) -> str:
    return (f"Pascal Sentences images not found under {root} (data folder from {how}). Expected layout: {LAYOUT}. "
            f"Download them with `{DOWNLOAD_COMMAND}` (needs internet), or point --data-dir / ${ENV_VAR} at a "
            f"folder that holds {FOLDER}/ with the images.")


def load(data_dir=None, *, seed: int = 0, val_fraction: float = 0.1, sentences: str = "join",
         validate_images: bool = True) -> CrossModalDataset:
    """Reads Pascal Sentences (layout, split and ``sentences`` setting: see the module docstring).

    ``val_fraction`` is unused: the dataset's own 800/100/100 protocol fixes the validation split.

    Raises:
        DatasetError: the folder or the images are absent (the message gives the download command).
    """
    del val_fraction
    if sentences not in ("join", "each"):
        raise DatasetError(f"pascal: sentences must be 'join' or 'each', got {sentences!r}")
    base, how = data_dir_source(data_dir)
    resolve_data_dir(data_dir)
    root = base / FOLDER
    if not root.is_dir():
        raise DatasetError(missing_images_message(root, how))
    catalogue = _read_catalogue(root)
    if not catalogue:
        raise DatasetError(f"no captions under {root}: expected {root / CAPTIONS_JSON} or sentence/<category>/*.txt "
                           f"(layout: {LAYOUT}); get them with `{DOWNLOAD_COMMAND}`")
    class_names = sorted({category for category, _ in catalogue.values()})
    images = sorted(catalogue)
    if not any((root / catalogue[i][0] / i).is_file() for i in images):
        raise DatasetError(missing_images_message(root, how))

    problems: list = []
    records = []
    for image in images:
        category, captions = catalogue[image]
        path = root / category / image
        if not path.is_file():
            problems.append(Problem(kind="missing_image", where=str(path), pair_id=image,
                                    message=f"image not found; re-run `{DOWNLOAD_COMMAND}` to fetch it"))
            continue
        if not captions:
            problems.append(Problem(kind="missing_text", where=str(root / "sentence" / category / image),
                                    pair_id=image, message="no sentences for this image; restore its sentence file"))
            continue
        if len(captions) != 5:
            problems.append(Problem(kind="caption_count", where=str(root / CAPTIONS_JSON), pair_id=image,
                                    dropped=False, message=f"{len(captions)} sentences instead of 5; all are used"))
        records.append({"id": image, "captions": captions, "label": class_names.index(category), "image": str(path)})
    if validate_images:
        records = drop_bad_images(records, problems=problems)

    labels = np.asarray([r["label"] for r in records])
    parts = stratified_split(labels, SPLIT_FRACTIONS, seed=seed)
    splits = {}
    for split, index in zip(("train", "val", "test"), parts):
        chosen = [records[i] for i in index]
        if sentences == "join":
            items = [{**r, "text": " ".join(r["captions"])} for r in chosen]
        else:
            items = [{**r, "id": f"{r['id']}#{k}", "text": c} for r in chosen for k, c in enumerate(r["captions"])]
        splits[split] = to_split(items)
    return assemble("pascal", class_names, splits, problems=problems, root=root, seed=seed, val_fraction=0.1)


# --------------------------------------------------------------------------------------------------- download


class _IndexParser(html.parser.HTMLParser):
    """Reads the official index page: one table row per image (``<img src="category/file.jpg">``) + its sentences."""

    def __init__(self):
        super().__init__()
        self.entries: dict = {}
        self._current: Optional[str] = None
        self._in_cell = False
        self._cell: list = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            src = dict(attrs).get("src") or ""
            parts = src.strip("/").split("/")
            if len(parts) >= 2 and parts[-1].lower().endswith(".jpg"):
                self._current = parts[-1]
                self.entries[self._current] = (parts[-2], [])
        elif tag == "td" and self._current is not None:
            self._in_cell, self._cell = True, []

    def handle_endtag(self, tag):
        if tag == "td" and self._in_cell:
            text = " ".join("".join(self._cell).split())
            if text:
                self.entries[self._current][1].append(text)
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self._cell.append(data)


def _fetch(url: str, dest: pathlib.Path, *, timeout: float) -> None:
    """Downloads ``url`` to ``dest`` atomically, resuming a partial ``dest.part`` with an HTTP Range request."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is already complete
            os.replace(part, dest)
            return
        raise
    with response:
        resumed = response.status == 206
        expected = response.headers.get("Content-Length")
        with open(part, "ab" if resumed else "wb") as f:
            while chunk := response.read(1 << 16):
                f.write(chunk)
    size = part.stat().st_size
    if expected is not None and size != (have if resumed else 0) + int(expected):
        raise DatasetError(f"incomplete download of {url} ({size} bytes); run the download again to resume")
    os.replace(part, dest)


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download_pascal(dest=None, *, base_url: str = OFFICIAL_URL, timeout: float = 30.0, log=print) -> pathlib.Path:
    """Downloads Pascal Sentences into ``<dest>/pascal_sentences/`` in the official layout; returns that folder.

    ``dest`` defaults to the data folder (``$CHTN_DATA_DIR``, else the user cache). Resumable: finished files
    whose SHA-256 matches ``SHA256SUMS`` are kept, a partial ``.part`` file is continued with an HTTP Range
    request. Each file is written to a temporary name and renamed when complete and decodable. The site
    publishes no checksums, so ``SHA256SUMS`` records those of the first complete download and later runs
    re-fetch any file that no longer matches.

    Raises:
        DatasetError: the site cannot be reached (offline) or a file cannot be fetched.
    """
    base = pathlib.Path(dest).expanduser() if dest else data_dir_source(None)[0]
    root = base / FOLDER
    try:
        with urllib.request.urlopen(base_url, timeout=timeout) as response:
            page = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as err:
        raise DatasetError(f"cannot reach {base_url} ({err}); this machine may be offline. Download on a machine "
                           f"with internet (`{DOWNLOAD_COMMAND}`) and copy {FOLDER}/ into the data folder "
                           f"(--data-dir or ${ENV_VAR})") from err
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"cannot create {root} ({err}); pass --data-dir DIR with a writable folder") from err
    parser = _IndexParser()
    parser.feed(page)
    catalogue = parser.entries or {k: v for k, v in _read_catalogue(root).items()}
    if not catalogue:
        raise DatasetError(f"found no images on {base_url}; the page layout may have changed")
    sums_path = root / CHECKSUMS
    sums = {}
    if sums_path.is_file():
        for line in sums_path.read_text(encoding="utf-8").splitlines():
            digest, _, name = line.partition("  ")
            sums[name] = digest
    for number, (image, (category, captions)) in enumerate(sorted(catalogue.items()), start=1):
        rel = f"{category}/{image}"
        path = root / category / image
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and sums.get(rel) == _sha256(path):
            continue
        log(f"[{number}/{len(catalogue)}] {rel}")
        try:
            _fetch(urllib.parse.urljoin(base_url, rel), path, timeout=timeout)
        except (urllib.error.URLError, OSError) as err:
            raise DatasetError(f"failed to download {rel} ({err}); run `{DOWNLOAD_COMMAND}` again to resume") from err
        verdict = check_image(str(path))
        if verdict is not None:
            path.unlink()
            raise DatasetError(f"downloaded {rel} but it {verdict}; run the download again")
        sums[rel] = _sha256(path)
        if captions:
            write_text_atomic(root / "sentence" / category / (pathlib.Path(image).stem + ".txt"),
                          "\n".join(captions) + "\n")
    write_text_atomic(sums_path, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    if not (root / CAPTIONS_JSON).is_file():
        write_text_atomic(root / CAPTIONS_JSON, json.dumps(
            {i: {"category": c, "captions": caps} for i, (c, caps) in sorted(catalogue.items())}, ensure_ascii=False))
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chtn_tf.data.pascal", description=__doc__.split("\n")[0])
    parser.add_argument("--download", action="store_true", help="fetch the images from the official site")
    parser.add_argument("--data-dir", help=f"data folder (default: ${ENV_VAR}, else the user cache folder)")
    parser.add_argument("--url", default=OFFICIAL_URL, help="base URL of the dataset page")
    args = parser.parse_args(argv)
    if not args.download:
        parser.print_help()
        return 2
    try:
        print(f"Pascal Sentences is in {download_pascal(args.data_dir, base_url=args.url)}")
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
