"""The examples page: which texts an image retrieves and which images a text finds, as one HTML file.

People judge a retrieval model by looking at what it returns. :func:`split_examples` picks query images and
texts of a split (seeded, spread over the classes), ranks the other modality by cosine similarity of the
common representation and reads each query's average precision from :mod:`chtn_tf.metrics.retrieval`;
:func:`write_examples_page` renders any queries and their ranked results (also ad-hoc queries against an
index) as a self-contained HTML file: inline CSS, thumbnails embedded as small base64 JPEGs, no script and
nothing fetched, so it opens from disk in any browser and stays well under 5 MB. A result is marked right
(✓) when its class is the query's, wrong (✗) otherwise; an unlabelled query gets no marks and no AP.
Datasets whose image side is feature vectors (Wikipedia SIFT) show the image id instead of a thumbnail.

Hand-written HTML (the standard library's ``html.escape``): a template engine would add a dependency for
one small page.
"""

from __future__ import annotations

import dataclasses
import html
import os
from typing import Optional, Sequence

import numpy as np

from chtn_tf.atomic import atomic_path
from chtn_tf.metrics.retrieval import average_precision_at, cosine_similarity, ranked_relevance
from chtn_tf.metrics.thumbnails import jpeg_data_uri, thumbnail

QUERIES_PER_DIRECTION = 8
TOP_K = 5
QUERY_THUMBNAIL = 176  # px, longest side
RESULT_THUMBNAIL = 128
QUERY_TEXT_CHARS = 140
RESULT_TEXT_CHARS = 110
TOOLTIP_TEXT_CHARS = 2000


@dataclasses.dataclass(frozen=True)
class Item:
    """An image or a text as the page shows it.

    Attributes:
        modality: ``"image"`` or ``"text"``.
        id: the pair id (or a file name for an ad-hoc query).
        label: the class name, or None when unknown (an ad-hoc query).
        text: the text (texts only).
        image_path: the image file; None for an image known only by its features (the id is shown).
    """

    modality: str
    id: str
    label: Optional[str] = None
    text: Optional[str] = None
    image_path: Optional[str] = None

    def __post_init__(self):
        if self.modality not in ("image", "text"):
            raise ValueError(f"Item.modality must be 'image' or 'text', got {self.modality!r}")


@dataclasses.dataclass(frozen=True)
class Result:
    """One retrieved item and its score (cosine similarity to the query)."""

    item: Item
    score: float


@dataclasses.dataclass(frozen=True)
class Query:
    """A query, its results (best first) and its average precision over the whole gallery (None: unknown)."""

    item: Item
    results: Sequence[Result]
    average_precision: Optional[float] = None

    def is_right(self, result: Result) -> Optional[bool]:
        """Whether ``result`` has the query's class (None when either class is unknown)."""
        if self.item.label is None or result.item.label is None:
            return None
        return result.item.label == self.item.label


@dataclasses.dataclass(frozen=True)
class Section:
    """A titled list of queries, e.g. ``"Image → text"``."""

    title: str
    queries: Sequence[Query]


def select_queries(labels, *, count: int = QUERIES_PER_DIRECTION, seed: int = 0) -> np.ndarray:
    """Indices of ``count`` items spread over the classes, fixed by ``seed``.

    The classes are visited in a seeded random order, one random item of each per round, until ``count``
    items are chosen (or all are): with at least ``count`` classes every query has a different class.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes.tolist()}
    count = min(count, len(labels))
    chosen = []
    while len(chosen) < count:
        for c in classes.tolist():
            if pools[c] and len(chosen) < count:
                chosen.append(int(pools[c].pop()))
    return np.asarray(chosen, dtype=np.int64)


def rank_examples(query_codes, query_labels, gallery_codes, gallery_labels, *, top_k: int = TOP_K):
    """``(top, scores, average_precision)`` of each query against the gallery.

    ``top`` ``[q, min(top_k, g)]``: gallery indices by descending cosine similarity (ties in gallery order,
    as the evaluation ranks); ``scores`` their cosines; ``average_precision`` ``[q]``: AP@all over the
    whole gallery, as :func:`chtn_tf.metrics.retrieval.mean_average_precision` averages it.
    """
    similarity = cosine_similarity(query_codes, gallery_codes)
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :top_k]
    average_precision = np.concatenate([
        average_precision_at(relevance)
        for relevance in ranked_relevance(query_codes, query_labels, gallery_codes, gallery_labels)])
    return top, np.take_along_axis(similarity, top, axis=1), average_precision


def split_examples(image_codes, text_codes, labels, *, ids, texts, class_names, image_paths=None,
                   seed: int = 0, count: int = QUERIES_PER_DIRECTION, top_k: int = TOP_K,
                   text_gallery_codes=None) -> list:
    """The two sections of a split's examples page: image → text and text → image.

    Args:
        image_codes, text_codes: ``[n, d]`` common-representation codes of the split's pairs.
        labels: int ``[n]`` class indices; ``class_names[k]`` names class ``k``.
        ids, texts: the pairs' ids and raw texts.
        image_paths: the pairs' image files, or None when the image side is features.
        seed: fixes which queries are shown (images and texts are drawn independently).
        count, top_k: queries per direction and results per query.
        text_gallery_codes: the texts' codes as found items (image → text), when they differ from their
            query codes (``model.text_gallery_linear_weight``); default ``text_codes``.
    """
    labels = np.asarray(labels)
    text_gallery_codes = text_codes if text_gallery_codes is None else text_gallery_codes
    n = len(labels)
    if not (len(image_codes) == len(text_codes) == len(ids) == len(texts) == n):
        raise ValueError(f"split_examples: {len(image_codes)} image codes, {len(text_codes)} text codes, "
                         f"{len(ids)} ids, {len(texts)} texts for {n} labels; all must be aligned by pair")
    if image_paths is not None and len(image_paths) != n:
        raise ValueError(f"split_examples: {len(image_paths)} image paths for {n} pairs")

    def item(modality, i):
        i = int(i)
        if modality == "image":
            return Item("image", str(ids[i]), class_names[int(labels[i])],
                        image_path=None if image_paths is None else image_paths[i])
        return Item("text", str(ids[i]), class_names[int(labels[i])], text=texts[i])

    sections = []
    for title, query_side, gallery_side, codes, gallery_codes, offset in (
            ("Image → text", "image", "text", image_codes, text_gallery_codes, 0),
            ("Text → image", "text", "image", text_codes, image_codes, 1)):
        chosen = select_queries(labels, count=count, seed=seed + offset)
        top, scores, aps = rank_examples(np.asarray(codes)[chosen], labels[chosen], gallery_codes, labels,
                                         top_k=top_k)
        queries = [Query(item(query_side, q),
                         [Result(item(gallery_side, g), float(s)) for g, s in zip(row, row_scores)],
                         float(ap))
                   for q, row, row_scores, ap in zip(chosen, top, scores, aps)]
        sections.append(Section(title, queries))
    return sections


def matches_section(matches: Sequence[dict], *, text: Optional[str] = None, image: Optional[str] = None) -> Section:
    """The section of one ad-hoc query (a ``text`` or an ``image`` file) and its ranked ``matches``.

    ``matches``: best first, dicts with ``id``, ``score``, ``label`` (class name), ``kind`` (``"image"`` or
    ``"text"``: what was found), ``image_path`` (None for a features gallery) and ``text`` (the pair's
    text), as :func:`export.index.query` returns them. The query has no class: no marks, no AP.
    """
    if (text is None) == (image is None):
        raise ValueError("matches_section: give exactly one of text or image")
    query = Item("text", "", text=text) if text is not None else \
        Item("image", os.path.basename(image), image_path=image)
    results = [Result(Item(m["kind"], str(m["id"]), m["label"], text=m.get("text"),
                           image_path=m.get("image_path")), float(m["score"])) for m in matches]
    title = "Text → image" if text is not None else "Image → text"
    return Section(title, [Query(query, results)])


def write_examples_page(path: str, sections: Sequence[Section], *, title: str, notes: Sequence[str] = ()) -> dict:
    """Renders ``sections`` as one self-contained HTML file at ``path`` (written atomically).

    ``notes``: lines under the title (the run, its test MAP, how the queries were chosen). Returns
    ``{"path", "bytes", "thumbnails", "unreadable"}``; ``unreadable`` lists ``(id, path, reason)`` of the
    images that could not be decoded (shown as their id with the reason, never as a broken image).
    """
    renderer = _Renderer()
    body = [f"<h1>{_e(title)}</h1>"]
    body += [f'<p class="note">{_e(line)}</p>' for line in notes]
    for section in sections:
        body.append(f'<section class="direction"><h2>{_e(section.title)}</h2>')
        body += [renderer.query(query) for query in section.queries]
        if not section.queries:
            body.append('<p class="note">no queries</p>')
        body.append("</section>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")
    data = page.encode("utf-8")
    with atomic_path(path, suffix=".html") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return {"path": path, "bytes": len(data), "thumbnails": renderer.thumbnails, "unreadable": renderer.unreadable}


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


class _Renderer:
    """HTML fragments of queries and results; counts thumbnails and unreadable images."""

    def __init__(self):
        self.thumbnails = 0
        self.unreadable = []
        self._cache = {}

    def _image(self, item: Item, size: int) -> str:
        if item.image_path is None:
            return (f'<div class="noimage" style="width:{size}px;height:{size * 3 // 4}px">'
                    f"image {_e(item.id)}<br><small>(features only)</small></div>")
        key = (item.image_path, size)
        if key not in self._cache:
            image, reason = thumbnail(item.image_path, size=size)
            if image is None:
                self.unreadable.append((item.id, item.image_path, reason))
                self._cache[key] = None, reason
            else:
                self._cache[key] = (jpeg_data_uri(image), image.size), None
        found, reason = self._cache[key]
        if found is None:
            return (f'<div class="noimage" style="width:{size}px;height:{size * 3 // 4}px">'
                    f"image {_e(item.id)}<br><small>{_e(reason)}</small></div>")
        uri, (width, height) = found
        self.thumbnails += 1
        name = os.path.basename(item.image_path)
        return (f'<img src="{uri}" width="{width}" height="{height}" alt="image {_e(item.id)}" '
                f'title="{_e(name)}">')

    def _content(self, item: Item, *, size: int, chars: int) -> str:
        if item.modality == "image":
            return self._image(item, size)
        full = _clip(item.text or "", TOOLTIP_TEXT_CHARS)
        return f'<p class="text" lang="und" title="{_e(full)}">{_e(_clip(item.text or "", chars))}</p>'

    def query(self, query: Query) -> str:
        item = query.item
        meta = [f'<span class="label">{_e(item.label)}</span>' if item.label is not None
                else '<span class="label unknown">ad-hoc query</span>']
        if item.id:
            meta.append(f'<span class="id">{_e(item.id)}</span>')
        if query.average_precision is not None:
            meta.append(f'<span class="ap">AP {query.average_precision:.3f}</span>')
        results = "".join(self.result(query, result, rank) for rank, result in enumerate(query.results, 1))
        return (f'<article class="query {item.modality}-query">'
                f'<div class="query-item"><div class="kind">query {item.modality}</div>'
                f"{self._content(item, size=QUERY_THUMBNAIL, chars=QUERY_TEXT_CHARS)}"
                f'<div class="meta">{" ".join(meta)}</div></div>'
                f'<ol class="results">{results or "<li class=empty>no results</li>"}</ol></article>')

    def result(self, query: Query, result: Result, rank: int) -> str:
        right = query.is_right(result)
        verdict, mark, why = {True: ("right", "✓", "same class as the query"),
                              False: ("wrong", "✗", "not the query's class"),
                              None: ("unmarked", "", "")}[right]
        item = result.item
        label = _e(item.label) if item.label is not None else "class unknown"
        return (f'<li class="result {verdict}">'
                f'<div class="head"><span class="rank">#{rank}</span>'
                f'<span class="mark" title="{why}">{mark}</span>'
                f'<span class="score" title="cosine similarity">{result.score:.4f}</span></div>'
                f"{self._content(item, size=RESULT_THUMBNAIL, chars=RESULT_TEXT_CHARS)}"
                f'<div class="meta"><span class="label">{label}</span> <span class="id">{_e(item.id)}</span>'
                f"</div></li>")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC",sans-serif;
margin:24px;color:#222;background:#fafafa;max-width:1400px}
h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #ccc}
.note{margin:2px 0;color:#555;font-size:13px}
.query{display:flex;gap:16px;align-items:flex-start;background:#fff;border:1px solid #ddd;border-radius:6px;
padding:10px;margin:10px 0}
.query-item{flex:0 0 200px;width:200px}.kind{font-size:11px;text-transform:uppercase;color:#888}
.query-item .text{font-size:13px}
.results{flex:1;display:grid;grid-template-columns:repeat(5,minmax(0,1fr));gap:10px;list-style:none;padding:0;margin:0}
.result{border:2px solid #ccc;border-radius:5px;padding:5px;background:#fff}
.result.right{border-color:#2e9b4f}.result.wrong{border-color:#d0453a}
.head{display:flex;justify-content:space-between;font-size:12px;color:#555}
.mark{font-weight:bold;font-size:15px}.right .mark{color:#2e9b4f}.wrong .mark{color:#d0453a}
.result .text{font-size:12px;margin:4px 0}
.meta{font-size:12px;color:#444;margin-top:3px;overflow-wrap:anywhere}
.label{font-weight:600}.id{color:#888}.ap{color:#225;font-weight:600}
img{display:block;margin:3px 0;border-radius:3px}
.noimage{display:flex;flex-direction:column;justify-content:center;align-items:center;text-align:center;
background:#eee;color:#555;font-size:12px;border-radius:3px;margin:3px 0}
"""
