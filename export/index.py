"""Retrieval over a collection through the exported SavedModels (no training code).

    python -m export.index build --serving SERVING_DIR --dataset webnews [--split test] --out INDEX
    python -m export.index build --serving SERVING_DIR --manifest pairs.csv --split all --out INDEX
    python -m export.index query --index INDEX --text "国庆长假" -k 10 [--approximate --nprobe 32]
    python -m export.index query --index INDEX --image photo.jpg -k 10 [--html matches.html]

``build`` embeds a gallery's images and texts with one exported version (the highest unless ``--version``)
and writes, atomically, ``INDEX/index.json`` (versions used, ids, labels, class names) and
``INDEX/embeddings.npz`` (unit-normalised embeddings and an inverted-file index per gallery). ``query``
embeds the query with the same version and prints the top matches of the other modality with cosine
scores and labels: a text finds images, an image finds texts.

Search is exact by default. ``--approximate`` uses the inverted-file (IVF) index: k-means cells over the
gallery, and only the ``nprobe`` cells nearest the query are scanned. ``build`` measures its recall@10
against exact search (the gallery's other modality as queries; tied scores count as found, see
:func:`measure_recall`) and records it in ``index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.npz"
DEFAULT_NPROBE = 32  # recall@10 ~0.99 on 10^4..10^6 random unit vectors (benchmarks/search.py); 8 gives ~0.8


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_search(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple:
    """``(indices, scores)`` ``[q, min(k, n)]`` of the top gallery rows by inner product (cosine for unit rows).

    Ties keep gallery order.
    """
    scores = queries @ gallery.T
    k = min(k, gallery.shape[0])
    if k == 0:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k] if k * 4 > gallery.shape[0] else None
    if order is None:  # large gallery: partial selection first, then sort the few candidates
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        within = np.lexsort((top, -top_scores), axis=1)
        order = np.take_along_axis(top, within, axis=1)
    return order, np.take_along_axis(scores, order, axis=1)


class IVFIndex:
    """Inverted-file approximate search: k-means cells over the gallery, scan only the ``nprobe`` nearest.

    Args:
        gallery: unit-normalised ``[n, d]`` vectors.
        n_cells: number of k-means cells (default ≈ 4·√n).
        seed: k-means initialisation seed.
        iterations: k-means (spherical: centroids re-normalised) iterations.
    """

    def __init__(self, gallery: np.ndarray, *, n_cells: int | None = None, seed: int = 0, iterations: int = 10):
        self.gallery = np.asarray(gallery, np.float32)
        n = len(self.gallery)
        n_cells = max(1, min(n, n_cells or int(round(4 * np.sqrt(n)))))
        rng = np.random.default_rng(seed)
        sample = self.gallery[rng.choice(n, size=min(n, 64 * n_cells), replace=False)]
        centroids = sample[rng.choice(len(sample), size=n_cells, replace=False)].copy()
        for _ in range(iterations):
            assign = np.argmax(sample @ centroids.T, axis=1)
            sums = np.zeros_like(centroids)
            np.add.at(sums, assign, sample)
            filled = np.bincount(assign, minlength=n_cells) > 0
            centroids[filled] = normalise(sums[filled])  # an empty cell keeps its centroid
        self.centroids = centroids
        self.assignments = np.concatenate([np.argmax(self.gallery[i:i + 65536] @ centroids.T, axis=1)
                                           for i in range(0, n, 65536)]) if n else np.zeros(0, np.int64)
        self.cells = self._group(self.assignments, n_cells)

    @staticmethod
    def _group(assignments: np.ndarray, n_cells: int) -> list:
        """Gallery row indices of each cell, ascending."""
        order = np.argsort(assignments, kind="stable")
        return np.split(order, np.cumsum(np.bincount(assignments, minlength=n_cells))[:-1])

    @classmethod
    def from_arrays(cls, gallery: np.ndarray, centroids: np.ndarray, assignments: np.ndarray) -> "IVFIndex":
        """An index restored from its stored centroids and cell assignments."""
        index = cls.__new__(cls)
        index.gallery = np.asarray(gallery, np.float32)
        index.centroids = np.asarray(centroids, np.float32)
        index.assignments = np.asarray(assignments, np.int64)
        index.cells = cls._group(index.assignments, len(index.centroids))
        return index

    def search(self, queries: np.ndarray, k: int, *, nprobe: int = DEFAULT_NPROBE) -> tuple:
        """``(indices, scores)`` like :func:`exact_search`, scanning ``nprobe`` cells per query.

        Slots beyond the candidates found are ``-1`` / ``-inf``.
        """
        cells = self.cells  # gallery rows of each cell, as built
        nearest_cells = np.argsort(-(queries @ self.centroids.T), axis=1)[:, :max(1, nprobe)]
        indices = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        for q, probe in enumerate(nearest_cells):
            candidates = np.sort(np.concatenate([cells[c] for c in probe]))
            if not len(candidates):
                continue
            top, top_scores = exact_search(self.gallery[candidates], queries[q:q + 1], k)
            indices[q, :top.shape[1]] = candidates[top[0]]
            scores[q, :top.shape[1]] = top_scores[0]
        return indices, scores


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / |exact top-k| (ids; assumes no tied scores)."""
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / len(e) for a, e in zip(approximate, exact)]))


def measure_recall(index: IVFIndex, queries: np.ndarray, *, k: int = 10, nprobe: int = DEFAULT_NPROBE,
                   tolerance: float = 1e-5) -> float:
    """Recall@k of ``index`` against exact search over its gallery, for ``queries``, counting ties.

    A returned item counts when its cosine is at least the exact k-th best minus ``tolerance`` (the
    ANN-benchmarks definition). Embeddings of a trained model tie often (saturated class probabilities
    give identical vectors), and then which of the tied items fill the top k is arbitrary; with distinct
    scores this equals :func:`recall_at_k`.
    """
    k = min(k, len(index.gallery))
    _, exact_scores = exact_search(index.gallery, queries, k)
    approximate, _ = index.search(queries, k, nprobe=nprobe)
    true_scores = np.einsum("qd,qkd->qk", queries, index.gallery[np.maximum(approximate, 0)])
    found = (approximate >= 0) & (true_scores >= exact_scores[:, -1:] - tolerance)
    return float(found.sum(axis=1).mean() / k)


def _read_split(dataset, manifest, data_dir, split):
    from chtn_tf.data import load_dataset

    data = load_dataset(dataset, manifest=manifest, data_dir=data_dir)
    if split == "all":
        parts = [data.splits[name] for name in ("train", "val", "test") if name in data.splits]
        merged = {key: [] for key in ("ids", "texts", "labels", "paths", "features")}
        for part in parts:
            merged["ids"] += list(part.ids)
            merged["texts"] += list(part.texts)
            merged["labels"].append(part.labels)
            merged["paths"] += part.image_paths or []
            if part.image_features is not None:
                merged["features"].append(part.image_features)
        return data, merged["ids"], merged["texts"], np.concatenate(merged["labels"]), \
            merged["paths"] or None, np.concatenate(merged["features"]) if merged["features"] else None
    part = data.splits[split]
    return data, list(part.ids), list(part.texts), part.labels, part.image_paths, part.image_features


def build(serving: str, out: str, *, dataset=None, manifest=None, data_dir=None, split: str = "test",
          version: int | None = None, n_cells: int | None = None, nprobe: int = DEFAULT_NPROBE) -> dict:
    """Embeds a split's images and texts through the SavedModels and writes the index folder atomically.

    Returns ``{"n", "dim", "versions", "recall_at_10"}`` (recall of the IVF index against exact search,
    per gallery, with ``nprobe`` cells scanned and the other modality's embeddings as queries).
    """
    from export.local import ExportedEncoders

    data, ids, texts, labels, paths, features = _read_split(dataset, manifest, data_dir, split)
    encoders = ExportedEncoders.from_serving_dir(serving, version)
    if encoders.image_input == "features":
        if features is None:
            raise ValueError(f"{encoders.image_dir} takes precomputed features, but {data.name} has image files")
        image_codes = encoders.embed_features(features)
    else:
        if paths is None:
            raise ValueError(f"{encoders.image_dir} takes encoded images, but {data.name} has only "
                             f"precomputed features")
        image_codes = encoders.embed_image_files(paths)
    galleries = {"images": normalise(image_codes), "texts": normalise(encoders.embed_texts(texts))}

    arrays, recall = {"labels": labels}, {}
    for name, other in (("images", "texts"), ("texts", "images")):
        ivf = IVFIndex(galleries[name], n_cells=n_cells)
        arrays.update({name: galleries[name], f"{name}_centroids": ivf.centroids, f"{name}_cells": ivf.assignments})
        recall[name] = measure_recall(ivf, galleries[other][:2000], nprobe=nprobe)
    meta = {"serving": os.path.abspath(serving), "image_model": os.path.abspath(encoders.image_dir),
            "text_model": os.path.abspath(encoders.text_dir), "image_input": encoders.image_input,
            "dataset": data.name, "split": split, "ids": ids, "class_names": list(data.class_names),
            "image_paths": paths, "texts": [t[:200] for t in texts],
            "ivf": {"cells": int(len(arrays["images_centroids"])), "nprobe": nprobe, "recall_at_10": recall}}

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(out)}-", dir=parent)
    try:
        np.savez(os.path.join(tmp, EMBEDDINGS_FILE), **arrays)
        with open(os.path.join(tmp, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False)
        from chtn_tf.atomic import replace_dir_atomic

        replace_dir_atomic(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"n": len(ids), "dim": int(image_codes.shape[1]), "recall_at_10": recall,
            "versions": (encoders.image_dir, encoders.text_dir)}


def query(index: str, *, text: str | None = None, image: str | None = None, k: int = 10,
          approximate: bool = False, nprobe: int | None = None) -> list:
    """Top ``k`` matches of a text (among the gallery's images) or an image file (among its texts).

    Returns rows ``{"rank", "id", "score", "label", "kind", "item", "image_path", "text"}``, best first
    (``image_path``: the pair's image file or None; ``text``: its text, first 200 characters).
    """
    from export.local import ExportedEncoders

    if (text is None) == (image is None):
        raise ValueError("give exactly one of text or image")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    for name in (INDEX_FILE, EMBEDDINGS_FILE):
        if not os.path.isfile(os.path.join(index, name)):
            raise FileNotFoundError(f"{index} is not an index folder ({name} is missing); make one with "
                                    f"python -m export.index build")
    with open(os.path.join(index, INDEX_FILE), encoding="utf-8") as f:
        meta = json.load(f)
    saved = np.load(os.path.join(index, EMBEDDINGS_FILE))
    for key in ("image_model", "text_model"):
        if not os.path.isfile(os.path.join(meta[key], "saved_model.pb")):
            raise FileNotFoundError(f"the index was built with {meta[key]}, which is gone; rebuild the index")
    encoders = ExportedEncoders(meta["image_model"], meta["text_model"])
    if text is not None:
        vector, gallery, kind = encoders.embed_texts([text]), "images", "image"
    else:
        if meta["image_input"] != "image_bytes":
            raise ValueError(f"this index's image model ({meta['image_model']}) takes precomputed features, so "
                             f"it cannot embed an image file; query it with --text")
        vector, gallery, kind = encoders.embed_image_files([image]), "texts", "text"
    vector = normalise(vector)
    if approximate:
        ivf = IVFIndex.from_arrays(saved[gallery], saved[f"{gallery}_centroids"], saved[f"{gallery}_cells"])
        indices, scores = ivf.search(vector, k, nprobe=nprobe or meta["ivf"]["nprobe"])
    else:
        indices, scores = exact_search(saved[gallery], vector, k)
    rows = []
    for i, score in zip(indices[0].tolist(), scores[0].tolist()):
        if i < 0:
            continue
        if kind == "image" and meta["image_paths"]:
            shown = meta["image_paths"][i]
        else:
            shown = " ".join(meta["texts"][i].split())[:60]  # one line per match
        rows.append({"rank": len(rows) + 1, "id": meta["ids"][i], "score": float(score),
                     "label": meta["class_names"][int(saved["labels"][i])], "kind": kind, "item": shown,
                     "image_path": meta["image_paths"][i] if meta["image_paths"] else None,
                     "text": meta["texts"][i]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.index", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="embed a gallery through the SavedModels")
    b.add_argument("--serving", required=True, help="the folder python -m export.saved_model wrote")
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a registered dataset name")
    source.add_argument("--manifest", help="a CSV manifest image,text,label[,split]")
    b.add_argument("--data-dir")
    b.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    b.add_argument("--version", type=int, help="exported version to use (default: the highest)")
    b.add_argument("--cells", type=int, help="IVF cells (default ≈ 4·√n)")
    b.add_argument("--nprobe", type=int, default=DEFAULT_NPROBE, help="cells scanned when measuring recall")
    b.add_argument("--out", required=True, help="index folder (replaced atomically)")
    q = commands.add_parser("query", help="top matches of a text or an image")
    q.add_argument("--index", required=True)
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="find the images matching this text")
    what.add_argument("--image", help="find the texts matching this image file")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--approximate", action="store_true", help="IVF search instead of exact")
    q.add_argument("--nprobe", type=int, help="IVF cells scanned (default: the build's)")
    q.add_argument("--html", metavar="FILE", help="also write the matches as a page (thumbnails embedded)")
    args = parser.parse_args(argv)

    from chtn_tf.data.types import DatasetError

    try:
        if args.command == "build":
            info = build(args.serving, args.out, dataset=args.dataset, manifest=args.manifest,
                         data_dir=args.data_dir, split=args.split, version=args.version, n_cells=args.cells,
                         nprobe=args.nprobe)
            recall = ", ".join(f"{g} {r:.3f}" for g, r in info["recall_at_10"].items())
            print(f"index of {info['n']} image/text pairs ({info['dim']}-d) written to {args.out}\n"
                  f"  models: {info['versions'][0]}, {info['versions'][1]}\n"
                  f"  IVF recall@10 vs exact (nprobe {args.nprobe}): {recall}")
        else:
            rows = query(args.index, text=args.text, image=args.image, k=args.k, approximate=args.approximate,
                         nprobe=args.nprobe)
            for row in rows:
                print(f"{row['rank']:>3}  {row['score']:.4f}  {row['label']:<20} {row['id']:<12} {row['item']}")
            if args.html:
                from chtn_tf.metrics.examples_page import matches_section, write_examples_page

                write_examples_page(args.html, [matches_section(rows, text=args.text, image=args.image)],
                                    title="chtn index query", notes=[f"index {os.path.abspath(args.index)}, "
                                                                     f"top {args.k}, cosine scores"])
                print(f"page written to {args.html}")
    except (FileNotFoundError, ValueError, DatasetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
