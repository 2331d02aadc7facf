"""Retrieval over a collection through the exported SavedModels (no training code).

    python -m export.index build --serving SERVING_DIR --dataset webnews [--split test] --out INDEX
    python -m export.index query --index INDEX --text "国庆长假" -k 10
    python -m export.index query --index INDEX --image photo.jpg -k 10

``build`` embeds a gallery's images and texts with the latest exported versions and stores unit-normalised
embeddings with ids, labels and class names. ``query`` embeds the query with the other modality's model and
prints the top matches with cosine scores and labels. Search is exact by default; ``--approximate`` uses an
inverted-file index (k-means cells, ``--nprobe`` cells visited), whose recall@10 against exact search is
measured by :func:`recall_at_k`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_search(gallery: np.ndarray, queries: np.ndarray, k: int):
    """``(indices, scores)`` of the top ``k`` gallery rows by cosine for each query (rows unit-normalised)."""
    scores = queries @ gallery.T
    k = min(k, gallery.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return top, np.take_along_axis(scores, top, axis=1)


class IVFIndex:
    """Inverted-file approximate search: k-means cells over the gallery, search only the ``nprobe`` nearest.

    Args:
        gallery: unit-normalised ``[n, d]`` vectors.
        n_cells: number of k-means cells (default ≈ 4·√n).
        seed: k-means initialisation seed.
    """

    def __init__(self, gallery: np.ndarray, *, n_cells: int | None = None, seed: int = 0, iterations: int = 10):
        self.gallery = np.asarray(gallery, np.float32)
        n = len(self.gallery)
        n_cells = max(1, min(n, n_cells or int(4 * np.sqrt(n))))
        rng = np.random.default_rng(seed)
        sample = self.gallery[rng.choice(n, size=min(n, 50 * n_cells), replace=False)]
        centroids = sample[rng.choice(len(sample), size=n_cells, replace=False)]
        for _ in range(iterations):
            assign = np.argmax(sample @ centroids.T, axis=1)
            for c in range(n_cells):
                members = sample[assign == c]
                if len(members):
                    centroids[c] = members.mean(axis=0)
            centroids = _normalise(centroids)
        self.centroids = centroids.astype(np.float32)
        assign = np.concatenate([np.argmax(self.gallery[i:i + 65536] @ self.centroids.T, axis=1)
                                 for i in range(0, n, 65536)])
        self.cells = [np.flatnonzero(assign == c) for c in range(n_cells)]

    def search(self, queries: np.ndarray, k: int, *, nprobe: int = 8):
        """``(indices, scores)`` like :func:`exact_search`, visiting ``nprobe`` cells per query."""
        nearest_cells = np.argsort(-(queries @ self.centroids.T), axis=1)[:, :nprobe]
        indices = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        for q, cells in enumerate(nearest_cells):
            candidates = np.concatenate([self.cells[c] for c in cells])
            if not len(candidates):
                continue
            top, top_scores = exact_search(self.gallery[candidates], queries[q:q + 1], k)
            indices[q, :top.shape[1]] = candidates[top[0]]
            scores[q, :top.shape[1]] = top_scores[0]
        return indices, scores


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Fraction of the exact top-k found by the approximate search (averaged over queries)."""
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approximate, exact)]))


def _latest(folder: str) -> str:
    versions = sorted(int(v) for v in os.listdir(folder) if v.isdigit())
    if not versions:
        raise FileNotFoundError(f"no SavedModel version under {folder}; run python -m export.saved_model first")
    return os.path.join(folder, str(versions[-1]))


def _embed(signature, key, values, batch_size=64):
    import tensorflow as tf

    return np.concatenate([signature(**{key: tf.constant(values[i:i + batch_size])})["embedding"].numpy()
                           for i in range(0, len(values), batch_size)])


def build(serving: str, out: str, *, dataset=None, manifest=None, data_dir=None, split="test") -> dict:
    """Embeds a split's images and texts through the SavedModels and writes the index folder."""
    import tensorflow as tf

    from chtn_tf.data import load_dataset

    data = load_dataset(dataset, manifest=manifest, data_dir=data_dir)
    part = data.splits[split]
    image_model = tf.saved_model.load(_latest(os.path.join(serving, "chtn_image")))
    text_model = tf.saved_model.load(_latest(os.path.join(serving, "chtn_text")))
    if part.image_paths is not None:
        raw = [open(p, "rb").read() for p in part.image_paths]
        image_codes = _embed(image_model.signatures["serving_default"], "image_bytes", raw)
    else:
        image_codes = _embed(image_model.signatures["serving_default"], "features", part.image_features)
    text_codes = _embed(text_model.signatures["serving_default"], "text", list(part.texts))
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, "embeddings.npz"), images=_normalise(image_codes), texts=_normalise(text_codes),
             labels=part.labels)
    meta = {"serving": os.path.abspath(serving), "dataset": data.name, "split": split, "ids": list(part.ids),
            "class_names": list(data.class_names), "image_paths": part.image_paths,
            "texts": [t[:200] for t in part.texts]}
    with open(os.path.join(out, "index.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False)
    return {"n": len(part), "dim": int(image_codes.shape[1])}


def query(index: str, *, text=None, image=None, k=10, approximate=False, nprobe=8):
    """Top ``k`` matches of a text (among the gallery's images) or an image (among its texts)."""
    import tensorflow as tf

    with open(os.path.join(index, "index.json"), encoding="utf-8") as f:
        meta = json.load(f)
    saved = np.load(os.path.join(index, "embeddings.npz"))
    if text is not None:
        model = tf.saved_model.load(_latest(os.path.join(meta["serving"], "chtn_text")))
        vector = _embed(model.signatures["serving_default"], "text", [text])
        gallery, kind = saved["images"], "image"
    else:
        model = tf.saved_model.load(_latest(os.path.join(meta["serving"], "chtn_image")))
        vector = _embed(model.signatures["serving_default"], "image_bytes", [open(image, "rb").read()])
        gallery, kind = saved["texts"], "text"
    vector = _normalise(vector)
    if approximate:
        indices, scores = IVFIndex(gallery).search(vector, k, nprobe=nprobe)
    else:
        indices, scores = exact_search(gallery, vector, k)
    rows = []
    for i, score in zip(indices[0], scores[0]):
        if i < 0:
            continue
        label = meta["class_names"][int(saved["labels"][i])]
        shown = meta["image_paths"][i] if kind == "image" and meta["image_paths"] else meta["texts"][i][:60]
        rows.append({"id": meta["ids"][i], "score": float(score), "label": label, "kind": kind, "item": shown})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.index", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="embed a gallery through the SavedModels")
    b.add_argument("--serving", required=True)
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset")
    source.add_argument("--manifest")
    b.add_argument("--data-dir")
    b.add_argument("--split", default="test", choices=("train", "val", "test"))
    b.add_argument("--out", required=True)
    q = commands.add_parser("query", help="top matches of a text or an image")
    q.add_argument("--index", required=True)
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--text")
    what.add_argument("--image")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--approximate", action="store_true", help="inverted-file search instead of exact")
    q.add_argument("--nprobe", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            info = build(args.serving, args.out, dataset=args.dataset, manifest=args.manifest,
                         data_dir=args.data_dir, split=args.split)
            print(f"index of {info['n']} image/text pairs ({info['dim']}-d) written to {args.out}")
        else:
            rows = query(args.index, text=args.text, image=args.image, k=args.k, approximate=args.approximate,
                         nprobe=args.nprobe)
            for rank, row in enumerate(rows, 1):
                print(f"{rank:>3}  {row['score']:.4f}  {row['label']:<24} {row['id']:<10} {row['item']}")
    except (FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
