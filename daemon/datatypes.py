"""Tensor data types: the KServe names, Triton's config names, numpy dtypes, and the raw byte layout
both protocols use (little-endian, row-major; BYTES as 4-byte-length-prefixed elements)."""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from naiad.daemon.errors import InvalidArgument


@dataclass(frozen=True)
class DataType:
    name: str          # the protocol's name: "FP32"
    config_name: str   # the model configuration's name: "TYPE_FP32"
    numpy: np.dtype    # object for BYTES: elements are `bytes`
    itemsize: int      # 0 for BYTES, whose elements vary in size

    def __str__(self) -> str:
        return self.name

    def __reduce__(self):
        # one object per type, in every process: code compares data types with `is`
        return parse, (self.name,)


def _dt(name: str, config_name: str, dtype) -> DataType:
    dtype = np.dtype(dtype)
    return DataType(name, config_name, dtype, 0 if dtype == np.dtype(object) else dtype.itemsize)


ALL = [
    _dt("BOOL", "TYPE_BOOL", np.bool_),
    _dt("UINT8", "TYPE_UINT8", np.uint8),
    _dt("UINT16", "TYPE_UINT16", np.uint16),
    _dt("UINT32", "TYPE_UINT32", np.uint32),
    _dt("UINT64", "TYPE_UINT64", np.uint64),
    _dt("INT8", "TYPE_INT8", np.int8),
    _dt("INT16", "TYPE_INT16", np.int16),
    _dt("INT32", "TYPE_INT32", np.int32),
    _dt("INT64", "TYPE_INT64", np.int64),
    _dt("FP16", "TYPE_FP16", np.float16),
    _dt("FP32", "TYPE_FP32", np.float32),
    _dt("FP64", "TYPE_FP64", np.float64),
    _dt("BF16", "TYPE_BF16", ml_dtypes.bfloat16),
    _dt("BYTES", "TYPE_STRING", object),
]
BY_NAME = {dt.name: dt for dt in ALL}
BYTES = BY_NAME["BYTES"]
BF16 = BY_NAME["BF16"]
_BY_ANY_NAME = {**BY_NAME, **{dt.config_name: dt for dt in ALL}, "TYPE_BYTES": BYTES, "STRING": BYTES}
# by numpy's type number, which is quicker to look up than the dtype; str and bytes arrays are BYTES
# (numpy has two type numbers for 64-bit integers: long and longlong)
_BY_TYPE_NUMBER = {dt.numpy.num: dt for dt in ALL} | {
    np.dtype("S").num: BYTES, np.dtype("U").num: BYTES,
    np.dtype(np.longlong).num: BY_NAME["INT64"], np.dtype(np.ulonglong).num: BY_NAME["UINT64"]}
_LENGTH = struct.Struct("<I")
# Limits on a tensor's shape in a request: Triton's (and numpy's) 64 dimensions, and an element count
# far beyond any message or shared-memory region, that keeps numpy's sizes from overflowing.
MAX_DIMS = 64
MAX_ELEMENTS = 1 << 40


def parse(text: str) -> DataType | None:
    """A data type from either spelling ("FP32" or "TYPE_FP32"); None if it is not one."""
    return _BY_ANY_NAME.get(text.upper()) if isinstance(text, str) else None


def of_array(array) -> DataType | None:
    """The data type an array (numpy, or anything with a numpy `dtype`) holds; str and fixed-width
    bytes arrays count as BYTES."""
    found = _BY_TYPE_NUMBER.get(array.dtype.num)
    return found if found is not None and array.dtype.isnative else None


def element_count(shape) -> int:
    return math.prod(shape)


def check_shape(kind: str, name: str, shape: list) -> int:
    """A tensor's shape as a request gives it: at most MAX_DIMS sizes, each an integer >= 0, spanning
    at most MAX_ELEMENTS elements (counted in Python integers, so nothing overflows; a size 0 counts
    as 1 there, since numpy refuses such shapes too). Returns the element count."""
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"{kind} '{name}': shape has {len(shape)} dimensions; at most {MAX_DIMS} "
                              f"are allowed")
    span = 1
    for size in shape:
        if type(size) is not int or size < 0:   # not a bool either
            raise InvalidArgument(f"{kind} '{name}': shape {list(shape)} must list sizes >= 0")
        span *= size or 1
    if span > MAX_ELEMENTS:
        raise InvalidArgument(f"{kind} '{name}': shape {list(shape)} is too large; a tensor holds at "
                              f"most {MAX_ELEMENTS} elements (2^40)")
    return math.prod(shape)


def text_element(name: str, index: int, text: str) -> bytes:
    """One BYTES element given as text (JSON), encoded as UTF-8; a lone surrogate has no encoding."""
    try:
        return text.encode()
    except UnicodeEncodeError as e:
        raise InvalidArgument(f"input '{name}': BYTES element {index} is not valid Unicode text "
                              f"({e.reason} at position {e.start}); send such data as binary")


def from_raw(name: str, datatype: DataType, shape: list[int], buffer) -> np.ndarray:
    """Decode one tensor's raw bytes (read-only, no copy for fixed-size types)."""
    count = element_count(shape)
    if datatype is BYTES:
        return bytes_from_raw(name, buffer, count).reshape(shape)
    expected = count * datatype.itemsize
    if len(buffer) != expected:
        raise InvalidArgument(
            f"input '{name}': shape {list(shape)} of {datatype} needs {expected} bytes, got {len(buffer)}")
    return np.frombuffer(buffer, datatype.numpy).reshape(shape)


def bytes_from_raw(name: str, buffer, count: int) -> np.ndarray:
    """Split length-prefixed BYTES elements into an object array of `bytes`."""
    view = memoryview(buffer)
    offset, end = 0, len(view)
    if count * 4 > end:  # each element takes at least its 4-byte length
        raise InvalidArgument(f"input '{name}': {end} bytes cannot hold the {count} BYTES elements "
                              f"the shape asks for")
    out = np.empty(count, dtype=object)
    for i in range(count):
        if offset + 4 > end:
            raise InvalidArgument(f"input '{name}': BYTES data holds {i} elements, the shape needs {count}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidArgument(f"input '{name}': BYTES element {i} claims {length} bytes, "
                                  f"only {end - offset} remain")
        out[i] = bytes(view[offset:offset + length])
        offset += length
    if offset != end:
        raise InvalidArgument(f"input '{name}': BYTES data has {end - offset} bytes left over after "
                              f"the {count} elements the shape asks for")
    return out


def element_bytes(value) -> bytes:
    """One BYTES element as bytes: str is UTF-8 encoded, numbers are written as text."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview, np.bytes_)):
        return bytes(value)
    return str(value).encode()


def to_raw(array: np.ndarray) -> bytes:
    """One tensor as raw bytes in the protocol's layout."""
    if array.dtype.kind in "OSU":
        parts = []
        for value in array.reshape(-1):
            data = element_bytes(value)
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return array.tobytes()   # in C order, whatever the layout


def raw_view(array: np.ndarray):
    """to_raw's bytes, as a view of the array where it is numeric and in C order (a bytes-like object
    whose len() is its size): a large output is then copied once, into the message it goes out in."""
    if array.dtype.kind in "OSU":
        return to_raw(array)
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)
