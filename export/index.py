"""Retrieval over a collection through the exported SavedModels (no training code), searched with FAISS.

    python -m export.index build --serving SERVING_DIR --run RUN_DIR [--split test] --out INDEX
    python -m export.index build --serving SERVING_DIR --manifest pairs.csv --split all --out INDEX
    python -m export.index query --index INDEX --text "国庆长假" -k 10 [--approximate [--nprobe 32]]
    python -m export.index query --index INDEX --image photo.jpg -k 10 [--html matches.html]

``build`` embeds a gallery's images and texts with one exported version (the highest unless ``--version``;
``query`` keeps using that version; texts as gallery items through ``serving_gallery``, a text query through
``serving_default``) and writes, atomically, the folder ``INDEX``: ``index.json`` (versions
used, ids, labels, texts, image paths, class names, the pairs the reader dropped) and, per gallery
(``images``, ``texts``), FAISS index files written with ``faiss.write_index``: an exact inner-product index
(``IndexFlatIP``) and an approximate one (IVF: ``IndexIVFFlat``, or HNSW: ``IndexHNSWFlat``). The gallery
is read the way the run read it when ``--run`` names the run folder (its dataset or manifest, seed,
validation fraction and reader options, from ``config.json``), so ``--split test`` is the run's test split.

Embeddings are unit-normalised, so inner product = cosine. Galleries larger than ``--shard-size`` rows are
written as several files per index (shards; the IVF shards share one trained coarse quantizer); ``query``
memory-maps the shards and searches them as one index (``faiss.IndexShardsIVF`` / ``faiss.IndexShards``), so a
gallery need not fit in memory.
``build`` measures the approximate index's recall@10 against exact search (the other modality's embeddings
as queries; tied scores count as found, see :func:`measure_recall`) and records it in ``index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import faiss
import numpy as np

from chtn_tf.atomic import atomic_dir
from chtn_tf.metrics.retrieval import l2_normalize

INDEX_FILE = "index.json"
APPROXIMATE_KINDS = ("ivf", "hnsw")
# IVF: cells probed per query. At 10^5..10^7 items (benchmarks/search.py, RESULTS.md) recall@10 is 0.98-1.0 on
# 10-d codes and 0.96-0.99 on clustered 1024-d codes, 8x (10^5 10-d) to 250x (10^7) faster than exact search.
DEFAULT_NPROBE = 32
# HNSW: neighbours per node, and the candidate list size at build and at search time.
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 80
DEFAULT_EF_SEARCH = 64
DEFAULT_SHARD_SIZE = 1_000_000
# memory-mapped reading: IVF inverted lists, or the flat vectors of IndexFlat / IndexHNSWFlat.
_MMAP_FLAGS = {"exact": faiss.IO_FLAG_MMAP_IFC, "ivf": faiss.IO_FLAG_MMAP, "hnsw": faiss.IO_FLAG_MMAP_IFC}


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as C-contiguous float32 (what FAISS takes)."""
    return np.ascontiguousarray(l2_normalize(x, dtype=np.float32))


def default_cells(n: int) -> int:
    """IVF cells for ``n`` items: ≈ 4·√n (the FAISS guidelines' 4–16·√n, at its cheap end)."""
    return max(1, min(n, int(round(4 * np.sqrt(n)))))


def exact_search(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple:
    """``(indices, scores)`` ``[q, min(k, n)]`` of the top gallery rows by inner product (cosine for unit rows).

    FAISS ``IndexFlatIP``; the order of equal scores is not specified.
    """
    gallery, queries = np.ascontiguousarray(gallery, np.float32), np.ascontiguousarray(queries, np.float32)
    k = min(k, len(gallery))
    if k == 0:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    scores, indices = index.search(queries, k)
    return indices, scores


def train_ivf(sample: np.ndarray, *, cells: int, seed: int = 0) -> faiss.IndexIVFFlat:
    """An empty inner-product IVF index whose ``cells`` k-means centroids are trained on ``sample``."""
    dim = sample.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(cells), faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    # A gallery of a few thousand pairs has fewer than FAISS's 39 training points per cell; that is expected
    # (recall is measured and recorded), so no warning.
    index.cp.min_points_per_centroid = 1
    index.train(np.ascontiguousarray(sample, np.float32))
    index.nprobe = DEFAULT_NPROBE
    return index


def empty_index(kind: str, dim: int, *, trained_ivf=None, hnsw_m: int = DEFAULT_HNSW_M,
                ef_construction: int = DEFAULT_EF_CONSTRUCTION) -> faiss.Index:
    """An empty index of ``kind`` (``exact``, ``ivf``: a copy of ``trained_ivf``, or ``hnsw``) to add rows to."""
    if kind == "exact":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        return faiss.clone_index(trained_ivf)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = DEFAULT_EF_SEARCH
        return index
    raise ValueError(f"unknown index kind {kind!r}; use exact, {' or '.join(APPROXIMATE_KINDS)}")


def ivf_training_sample(vectors: np.ndarray, cells: int, *, seed: int = 0) -> np.ndarray:
    """At most 64 rows per cell, drawn without replacement (k-means needs ~40; more only slows training)."""
    rng = np.random.default_rng(seed)
    n = len(vectors)
    if n <= 64 * cells:
        return vectors
    return vectors[np.sort(rng.choice(n, size=64 * cells, replace=False))]


def write_shards(vectors: np.ndarray, kind: str, folder: str, name: str, *, shard_size: int = DEFAULT_SHARD_SIZE,
                 cells: int | None = None, seed: int = 0, **hnsw) -> list:
    """Writes ``vectors`` (unit rows) as FAISS index files ``<name>.<kind>.<i>.faiss`` of at most ``shard_size``
    rows each; returns the file names. Shard ``i`` holds rows ``[i·shard_size, (i+1)·shard_size)``."""
    n, dim = vectors.shape
    trained = None
    if kind == "ivf":
        cells = default_cells(n) if cells is None else max(1, min(n, cells))
        trained = train_ivf(ivf_training_sample(vectors, cells, seed=seed), cells=cells, seed=seed)
    names = []
    for i, start in enumerate(range(0, max(n, 1), shard_size)):
        index = empty_index(kind, dim, trained_ivf=trained, **hnsw)
        index.add(np.ascontiguousarray(vectors[start:start + shard_size]))
        names.append(f"{name}.{kind}.{i}.faiss")
        faiss.write_index(index, os.path.join(folder, names[-1]))
    return names


def open_index(paths: list, kind: str, *, mmap: bool = True) -> faiss.Index:
    """The index files of one gallery, searched as one index (shard ids follow on: shard 1 starts after
    shard 0's rows). Memory-mapped unless ``mmap`` is false.

    IVF shards (written by :func:`write_shards`, one coarse quantizer for all) are joined by
    ``faiss.IndexShardsIVF``, which assigns a query to its cells once for all shards; others by
    ``faiss.IndexShards``.

    Raises:
        ValueError: IVF shard files whose coarse quantizers differ (not written together).
    """
    flags = (_MMAP_FLAGS[kind] | faiss.IO_FLAG_READ_ONLY) if mmap else 0
    shards = [faiss.read_index(path, flags) for path in paths]
    if len(shards) == 1:
        return shards[0]
    if kind == "ivf":
        quantizer = faiss.downcast_index(shards[0].quantizer)
        centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
        for path, shard in zip(paths[1:], shards[1:]):
            if shard.nlist != shards[0].nlist or not np.array_equal(
                    shard.quantizer.reconstruct_n(0, shard.quantizer.ntotal), centroids):
                raise ValueError(f"{path} has other IVF cells than {paths[0]}: the shard files of one gallery must "
                                 f"be written together (python -m export.index build)")
        joined = faiss.IndexShardsIVF(quantizer, shards[0].nlist, False, True)  # not threaded; successive ids
    else:
        joined = faiss.IndexShards(shards[0].d, False, True)
    for shard in shards:
        joined.add_shard(shard)
    return joined


def set_search_parameters(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Sets IVF ``nprobe`` / HNSW ``efSearch`` on ``index`` and on each of its shards (where they apply)."""
    space = faiss.ParameterSpace()
    if nprobe is not None:
        if nprobe < 1:
            raise ValueError(f"--nprobe must be at least 1, got {nprobe}")
        first = index.at(0) if isinstance(index, faiss.IndexShards) else index
        try:  # at most every cell (IndexShardsIVF does not clamp nprobe itself)
            nprobe = min(nprobe, faiss.extract_index_ivf(first).nlist)
        except RuntimeError:
            pass  # not an IVF index: ParameterSpace ignores nprobe
        space.set_index_parameter(index, "nprobe", int(nprobe))
    if ef_search is not None:
        if ef_search < 1:
            raise ValueError(f"--ef-search must be at least 1, got {ef_search}")
        space.set_index_parameter(index, "efSearch", int(ef_search))


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / |exact top-k| (ids; assumes no tied scores)."""
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / len(e) for a, e in zip(approximate, exact)]))


def measure_recall(index: faiss.Index, gallery: np.ndarray, queries: np.ndarray, *, k: int = 10,
                   tolerance: float = 1e-5) -> float:
    """Recall@k of ``index`` (over ``gallery``, search parameters as set) against exact search, counting ties.

    A returned item counts when its cosine is at least the exact k-th best minus ``tolerance`` (the
    ANN-benchmarks definition). Embeddings of a trained model tie often (saturated class probabilities
    give identical vectors), and then which of the tied items fill the top k is arbitrary; with distinct
    scores this equals :func:`recall_at_k`.
    """
    k = min(k, len(gallery))
    queries = np.ascontiguousarray(queries, np.float32)
    _, exact_scores = exact_search(gallery, queries, k)
    _, approximate = index.search(queries, k)
    true_scores = np.einsum("qd,qkd->qk", queries, gallery[np.maximum(approximate, 0)])
    found = (approximate >= 0) & (true_scores >= exact_scores[:, -1:] - tolerance)
    return float(found.sum(axis=1).mean() / k)


def read_gallery(split: str, *, run: str | None = None, dataset: str | None = None, manifest: str | None = None,
                 data_dir: str | None = None) -> tuple:
    """``(dataset, ids, texts, labels, image_paths or None, image_features or None, dropped ids)`` of one
    split (or ``all``); ``dropped`` lists the pairs of that split the reader left out (with their problems in
    ``dataset.problems``).

    With ``run`` the data is read as ``training.fit`` read it for that run (dataset or manifest, data folder,
    seed, validation fraction, ``--allow-leak`` and reader options from its ``config.json``), so the splits
    are the run's;
    otherwise ``dataset`` / ``manifest`` is read with the reader's defaults (seed 0).
    """
    from chtn_tf.data import load_dataset, read_dataset

    if run is not None:
        from chtn_tf.model.config import ExperimentConfig

        path = os.path.join(run, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{run} has no config.json: --run takes a training.fit run folder")
        data = read_dataset(ExperimentConfig.from_json(path), data_dir=data_dir)
    else:
        data = load_dataset(dataset, manifest=manifest, data_dir=data_dir)
    names = [name for name in ("train", "val", "test") if name in data.splits] if split == "all" else [split]
    parts = [data.splits[name] for name in names]
    ids = [i for part in parts for i in part.ids]
    texts = [t for part in parts for t in part.texts]
    labels = np.concatenate([np.asarray(part.labels) for part in parts])
    paths = [p for part in parts for p in part.image_paths] if all(p.image_paths for p in parts) else None
    features = (np.concatenate([part.image_features for part in parts])
                if all(p.image_features is not None for p in parts) else None)
    dropped = data.dropped() if split == "all" else data.dropped(split)
    return data, ids, texts, labels, paths, features, dropped


def build(serving: str, out: str, *, run=None, dataset=None, manifest=None, data_dir=None, split: str = "test",
          version: int | None = None, approximate: str = "ivf", cells: int | None = None,
          nprobe: int = DEFAULT_NPROBE, hnsw_m: int = DEFAULT_HNSW_M, ef_search: int = DEFAULT_EF_SEARCH,
          shard_size: int = DEFAULT_SHARD_SIZE) -> dict:
    """Embeds a split's images and texts through the SavedModels and writes the index folder atomically.

    Returns ``{"n", "dim", "versions", "recall_at_10", "dropped"}``: recall of the approximate index against
    exact search per gallery (the other modality's embeddings as queries, ``nprobe`` / ``ef_search`` as
    given), and the ids of the split's pairs the reader dropped.
    """
    from export.local import ExportedEncoders

    if approximate not in APPROXIMATE_KINDS:
        raise ValueError(f"--approximate-kind must be one of {', '.join(APPROXIMATE_KINDS)}, got {approximate!r}")
    for flag, value, least in (("--shard-size", shard_size, 1), ("--cells", cells, 1), ("--nprobe", nprobe, 1),
                               ("--hnsw-m", hnsw_m, 2), ("--ef-search", ef_search, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    data, ids, texts, labels, paths, features, dropped = read_gallery(split, run=run, dataset=dataset,
                                                                      manifest=manifest, data_dir=data_dir)
    if not ids:
        raise ValueError(f"the {split} split of {data.name} has no pairs")
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
    # A text gallery holds the texts' gallery codes; the recall check queries the images with their query codes.
    codes = {"images": normalise(image_codes), "texts": normalise(encoders.embed_text_gallery(texts))}
    queries = {"images": normalise(encoders.embed_texts(texts[:2000])), "texts": codes["images"][:2000]}

    with atomic_dir(out) as tmp:
        files, recall = {}, {}
        for name in ("images", "texts"):
            files[name] = {"exact": write_shards(codes[name], "exact", tmp, name, shard_size=shard_size),
                           approximate: write_shards(codes[name], approximate, tmp, name, shard_size=shard_size,
                                                     cells=cells, **({"hnsw_m": hnsw_m} if approximate == "hnsw"
                                                                     else {}))}
            index = open_index([os.path.join(tmp, f) for f in files[name][approximate]], approximate, mmap=False)
            set_search_parameters(index, **_search_parameters(approximate, nprobe, ef_search))
            recall[name] = measure_recall(index, codes[name], queries[name])
        meta = {"serving": os.path.abspath(serving), "image_model": os.path.abspath(encoders.image_dir),
                "text_model": os.path.abspath(encoders.text_dir), "image_input": encoders.image_input,
                "dataset": data.name, "run": os.path.abspath(run) if run else None, "split": split,
                "dropped": dropped, "ids": ids, "labels": [int(v) for v in labels],
                "class_names": list(data.class_names), "image_paths": paths, "texts": [t[:200] for t in texts],
                "dim": int(codes["images"].shape[1]), "files": files,
                "approximate": {"kind": approximate, "nprobe": nprobe, "ef_search": ef_search,
                                "recall_at_10": recall}}
        with open(os.path.join(tmp, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False)
    return {"n": len(ids), "dim": meta["dim"], "recall_at_10": recall, "dropped": dropped,
            "versions": (encoders.image_dir, encoders.text_dir)}


def _search_parameters(kind: str, nprobe: int | None, ef_search: int | None) -> dict:
    return {"nprobe": nprobe} if kind == "ivf" else {"ef_search": ef_search} if kind == "hnsw" else {}


def query(index: str, *, text: str | None = None, image: str | None = None, k: int = 10,
          approximate: bool = False, nprobe: int | None = None, ef_search: int | None = None) -> list:
    """Top ``k`` matches of a text (among the gallery's images) or an image file (among its texts).

    Returns one dict per match, best first: ``rank``, ``id`` (the pair's id), ``score`` (cosine), ``label``
    (class name), ``kind`` (``"image"`` or ``"text"``: what was found), ``image_path`` (the pair's image file,
    None for a features gallery), ``text`` (the pair's text, first 200 characters) and ``item`` (one line to
    print: the image path of a found image, else the text).
    """
    from export.local import ExportedEncoders

    if (text is None) == (image is None):
        raise ValueError("give exactly one of text or image")
    if text is not None and not text.strip():
        raise ValueError("--text is empty: give the words to search for, e.g. --text \"football match\"")
    if k < 1:
        raise ValueError(f"-k must be at least 1, got {k}")
    if image is not None and not os.path.isfile(image):
        raise FileNotFoundError(f"--image {image}: no such file")
    meta_path = os.path.join(index, INDEX_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{index} is not an index folder ({INDEX_FILE} is missing); make one with "
                                f"python -m export.index build")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if "files" not in meta:
        raise ValueError(f"{index} was written by an older chtn (no FAISS index files); rebuild it with "
                         f"python -m export.index build")
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
    index_kind = meta["approximate"]["kind"] if approximate else "exact"
    searcher = open_index([os.path.join(index, f) for f in meta["files"][gallery][index_kind]], index_kind)
    set_search_parameters(searcher, **_search_parameters(
        index_kind, meta["approximate"]["nprobe"] if nprobe is None else nprobe,
        meta["approximate"]["ef_search"] if ef_search is None else ef_search))
    scores, indices = searcher.search(normalise(vector), min(k, searcher.ntotal))
    rows = []
    for i, score in zip(indices[0].tolist(), scores[0].tolist()):
        if i < 0:  # fewer candidates than k in the probed cells
            continue
        image_path = meta["image_paths"][i] if meta["image_paths"] else None
        pair_text = meta["texts"][i]
        rows.append({"rank": len(rows) + 1, "id": meta["ids"][i], "score": float(score),
                     "label": meta["class_names"][meta["labels"][i]], "kind": kind, "image_path": image_path,
                     "text": pair_text,
                     "item": image_path if kind == "image" and image_path else " ".join(pair_text.split())[:60]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.index", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="embed a gallery through the SavedModels")
    b.add_argument("--serving", required=True, help="the folder python -m export.saved_model wrote")
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="the training.fit run folder: its data, seed and options give the split")
    source.add_argument("--dataset", help="a registered dataset name (its default split, seed 0)")
    source.add_argument("--manifest", help="a CSV manifest image,text,label[,split] (its default split, seed 0)")
    b.add_argument("--data-dir", help="data root (default: the run's, then $CHTN_DATA_DIR)")
    b.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    b.add_argument("--version", type=int, help="exported version to use (default: the highest)")
    b.add_argument("--approximate-kind", choices=APPROXIMATE_KINDS, default="ivf",
                   help="the approximate index written beside the exact one (default ivf)")
    b.add_argument("--cells", type=int, help="IVF cells (default ≈ 4·√n)")
    b.add_argument("--nprobe", type=int, default=DEFAULT_NPROBE,
                   help=f"IVF cells scanned per query by default (default {DEFAULT_NPROBE})")
    b.add_argument("--hnsw-m", type=int, default=DEFAULT_HNSW_M, help="HNSW neighbours per node")
    b.add_argument("--ef-search", type=int, default=DEFAULT_EF_SEARCH,
                   help=f"HNSW candidates per query by default (default {DEFAULT_EF_SEARCH})")
    b.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"rows per index file (default {DEFAULT_SHARD_SIZE:,}); a query memory-maps the files")
    b.add_argument("--out", required=True, help="index folder (replaced atomically)")
    q = commands.add_parser("query", help="top matches of a text or an image")
    q.add_argument("--index", required=True)
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="find the images matching this text")
    what.add_argument("--image", help="find the texts matching this image file")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--approximate", action="store_true", help="the approximate index (IVF or HNSW) instead of exact")
    q.add_argument("--nprobe", type=int, help="IVF cells scanned (default: the build's)")
    q.add_argument("--ef-search", type=int, help="HNSW candidates per query (default: the build's)")
    q.add_argument("--html", metavar="FILE", help="also write the matches as a page (thumbnails embedded)")
    args = parser.parse_args(argv)

    from chtn_tf.data.types import DatasetError

    try:
        if args.command == "build":
            info = build(args.serving, args.out, run=args.run, dataset=args.dataset, manifest=args.manifest,
                         data_dir=args.data_dir, split=args.split, version=args.version,
                         approximate=args.approximate_kind, cells=args.cells, nprobe=args.nprobe,
                         hnsw_m=args.hnsw_m, ef_search=args.ef_search, shard_size=args.shard_size)
            recall = ", ".join(f"{g} {r:.3f}" for g, r in info["recall_at_10"].items())
            setting = f"nprobe {args.nprobe}" if args.approximate_kind == "ivf" else f"efSearch {args.ef_search}"
            print(f"index of {info['n']} image/text pairs ({info['dim']}-d) written to {args.out}\n"
                  f"  models: {info['versions'][0]}, {info['versions'][1]}\n"
                  f"  {args.approximate_kind.upper()} recall@10 vs exact ({setting}): {recall}")
            if info["dropped"]:
                print(f"  {len(info['dropped'])} pairs dropped by the reader (see `python -m chtn_tf.data.inspect`): "
                      f"{', '.join(info['dropped'])}")
        else:
            rows = query(args.index, text=args.text, image=args.image, k=args.k, approximate=args.approximate,
                         nprobe=args.nprobe, ef_search=args.ef_search)
            for row in rows:
                print(f"{row['rank']:>3}  {row['score']:.4f}  {row['label']:<20} {row['id']:<12} {row['item']}")
            if args.html:
                from chtn_tf.metrics.examples_page import matches_section, write_examples_page

                search = "approximate" if args.approximate else "exact"
                write_examples_page(args.html, [matches_section(rows, text=args.text, image=args.image)],
                                    title="chtn index query",
                                    notes=[f"index {os.path.abspath(args.index)}: top {args.k} by cosine, {search} search"])
                print(f"page written to {args.html}")
    except (FileNotFoundError, ValueError, DatasetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
