"""Tensors on the wire: the protocol's datatype names, numpy's dtypes, and the raw byte layout both
protocols use (little-endian, row-major; BYTES as elements each preceded by its 4-byte length)."""
from __future__ import annotations

import math
import struct

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(object),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_LENGTH = struct.Struct("<I")


def datatype_of(array: np.ndarray) -> str:
    """The protocol's name for an array's dtype; str, bytes and object arrays are BYTES."""
    name = _NAMES.get(array.dtype)
    if name is not None:
        return name
    if array.dtype.kind in "SUO":
        return "BYTES"
    if array.dtype.newbyteorder("=") in _NAMES:    # big-endian numbers: the wire is little-endian
        return _NAMES[array.dtype.newbyteorder("=")]
    raise TypeError(f"numpy dtype {array.dtype} has no protocol datatype; expected one of "
                    f"{', '.join(str(d) for d in DTYPES.values())}")


def as_array(name: str, value) -> np.ndarray:
    """An input's value as a numpy array (lists and scalars are converted by numpy's rules)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind not in "SUO" and not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def to_raw(array: np.ndarray) -> bytes:
    """An array as the protocol's raw bytes."""
    if array.dtype.kind in "SUO":
        parts = []
        for value in array.reshape(-1).tolist():
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return array.tobytes()


def from_raw(datatype: str, shape: list[int], buffer) -> np.ndarray:
    """Raw bytes as an array: a view of `buffer` for fixed-size types (read-only where buffer is), an
    object array of bytes for BYTES."""
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"unknown datatype '{datatype}'")
    if datatype == "BYTES":
        return bytes_from_raw(buffer, math.prod(shape)).reshape(shape)
    return np.frombuffer(buffer, dtype).reshape(shape)


def bytes_from_raw(buffer, count: int) -> np.ndarray:
    view = memoryview(buffer)
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        out[i] = bytes(view[offset:offset + length])
        offset += length
    return out


def from_list(datatype: str, shape: list[int], values) -> np.ndarray:
    """Values given as a list (gRPC's typed contents, HTTP's JSON data) as an array; BYTES elements
    become bytes."""
    if datatype == "BYTES":
        flat = np.array(values, dtype=object).reshape(-1)
        out = np.empty(len(flat), dtype=object)
        out[:] = [v.encode() if isinstance(v, str) else bytes(v) for v in flat]
        return out.reshape(shape)
    return np.array(values, dtype=DTYPES[datatype]).reshape(shape)
