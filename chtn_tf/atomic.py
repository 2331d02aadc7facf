"""Atomic file writes: a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile

LOCK_FILE = ".lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def atomic_path(path: str, *, suffix: str = ""):
    """Yields a temporary path in the same folder; on success it replaces ``path`` in one rename.

    ``suffix`` keeps a required file ending (Keras wants ``.weights.h5``).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode open() would have
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json_atomic(path: str, value) -> None:
    """Writes ``value`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def replace_dir_atomic(tmp_dir: str, final_dir: str) -> None:
    """Moves a fully written folder into place; an older ``final_dir`` is removed only after the swap."""
    old = None
    if os.path.exists(final_dir):
        old = f"{final_dir}.old-{os.getpid()}"
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str, *, replace: bool = True):
    """Yields a new temporary folder beside ``path``; when the block succeeds the folder becomes ``path``.

    Args:
        path: the folder to write.
        replace: replace an existing ``path`` (:func:`replace_dir_atomic`). When False, a ``path`` that exists
            (another process wrote it meanwhile) is kept and this copy is discarded.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder the mode mkdir() would have
        if replace:
            replace_dir_atomic(tmp, path)
        elif not os.path.exists(path):
            try:
                os.replace(tmp, path)
            except OSError:  # another process moved its copy in first
                if not os.path.isdir(path):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: str, *, flag: str = "--out"):
    """Holds an exclusive lock on ``folder`` (created if needed) for the duration of the block.

    The lock is the kernel's (``flock`` on ``folder/.lock``): it is released when the process ends, even by
    SIGKILL, so a killed run never leaves the folder locked.

    Raises:
        FolderBusy: another process holds it (the message names ``flag``, the option that chose the folder).
    """
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_FILE), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"{folder} is in use by another process (its {LOCK_FILE} is locked); wait for it to "
                             f"finish or pass another {flag}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
