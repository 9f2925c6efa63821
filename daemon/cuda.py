"""Device memory without a Python package: the CUDA driver API (libcuda) through ctypes, for the CUDA
shared-memory extension: open a client's IPC handle, and copy between host and device memory.

`DeviceArray` describes a tensor in device memory with `__cuda_array_interface__`, which torch, CuPy
and XGBoost read without a copy. Pointers belong to each device's primary context, the one the CUDA
runtime (and so torch and CuPy) uses, so they are valid there as they are."""
from __future__ import annotations

import ctypes
import functools
import threading

import numpy as np

from naiad.daemon.errors import InvalidArgument, Unimplemented

IPC_HANDLE_BYTES = 64
_LAZY_ENABLE_PEER_ACCESS = 1
_lock = threading.Lock()


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_ubyte * IPC_HANDLE_BYTES)]


@functools.cache
def _driver():
    """libcuda, initialised; None where this machine has no NVIDIA driver."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if lib.cuInit(0) != 0:
        return None
    lib.cuIpcOpenMemHandle_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), _IpcHandle, ctypes.c_uint]
    lib.cuIpcCloseMemHandle.argtypes = [ctypes.c_uint64]
    lib.cuMemcpy.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t]
    lib.cuStreamSynchronize.argtypes = [ctypes.c_void_p]
    return lib


def available() -> bool:
    return _driver() is not None


def _error_text(lib, status: int) -> str:
    text = ctypes.c_char_p()
    lib.cuGetErrorString(status, ctypes.byref(text))
    return text.value.decode() if text.value else f"CUDA error {status}"


def _check(lib, status: int, what: str) -> None:
    if status != 0:
        raise InvalidArgument(f"{what}: {_error_text(lib, status)}")


@functools.cache
def _primary_context(device_id: int) -> ctypes.c_void_p:
    lib = _driver()
    device = ctypes.c_int()
    _check(lib, lib.cuDeviceGet(ctypes.byref(device), device_id), f"GPU {device_id}")
    context = ctypes.c_void_p()
    _check(lib, lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), f"GPU {device_id}")
    return context


def _enter(device_id: int):
    """The driver, with `device_id`'s primary context current on this thread."""
    lib = _driver()
    if lib is None:
        raise Unimplemented("CUDA shared memory needs an NVIDIA GPU and its driver; this server has none")
    with _lock:
        context = _primary_context(device_id)
    _check(lib, lib.cuCtxSetCurrent(context), f"GPU {device_id}")
    return lib


def open_ipc_handle(raw_handle: bytes, device_id: int) -> int:
    """Map another process's device allocation into this one; its device pointer."""
    if len(raw_handle) != IPC_HANDLE_BYTES:
        raise InvalidArgument(f"raw_handle must be a CUDA IPC handle of {IPC_HANDLE_BYTES} bytes, got "
                              f"{len(raw_handle)}")
    lib = _enter(device_id)
    pointer = ctypes.c_uint64()
    handle = _IpcHandle.from_buffer_copy(raw_handle)  # every byte: the handle holds zeros
    _check(lib, lib.cuIpcOpenMemHandle_v2(ctypes.byref(pointer), handle, _LAZY_ENABLE_PEER_ACCESS),
           f"cannot open the CUDA IPC handle on GPU {device_id}")
    return pointer.value


def close_ipc_handle(pointer: int, device_id: int) -> None:
    lib = _enter(device_id)
    lib.cuIpcCloseMemHandle(pointer)


def copy(destination: int, source: int, byte_count: int, device_id: int) -> None:
    """Copy between two addresses, host or device (the driver tells which by unified addressing);
    returns once the copy is done (a copy within the device may return before, so it is waited for)."""
    if byte_count:
        lib = _enter(device_id)
        _check(lib, lib.cuMemcpy(destination, source, byte_count), "copy to or from GPU memory")
        _check(lib, lib.cuStreamSynchronize(None), "copy to or from GPU memory")


class DeviceArray:
    """A tensor in device memory: where it is, its shape and data type. `owner` keeps the memory alive
    (a shared-memory region, or the framework tensor it came from)."""

    __slots__ = ("pointer", "shape", "dtype", "device_id", "owner")

    def __init__(self, pointer: int, shape: tuple[int, ...], dtype: np.dtype, device_id: int, owner=None):
        self.pointer = pointer
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.device_id = device_id
        self.owner = owner

    @classmethod
    def of(cls, tensor, device_id: int, dtype: np.dtype | None = None) -> "DeviceArray":
        """A view of any object with `__cuda_array_interface__` (contiguous), e.g. a torch tensor."""
        interface = tensor.__cuda_array_interface__
        if interface.get("strides") is not None:
            raise ValueError("only contiguous device tensors can be viewed")
        return cls(interface["data"][0], interface["shape"], dtype or np.dtype(interface["typestr"]),
                   device_id, tensor)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, rows: slice) -> "DeviceArray":
        """Rows along the first dimension (a view): `array[start:end]`."""
        start, end, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("device arrays are sliced in steps of one row")
        row_bytes = self.nbytes // self.shape[0] if self.shape[0] else 0
        return DeviceArray(self.pointer + start * row_bytes, (max(end - start, 0), *self.shape[1:]),
                           self.dtype, self.device_id, self.owner)

    def reshape(self, shape) -> "DeviceArray":
        return DeviceArray(self.pointer, tuple(shape), self.dtype, self.device_id, self.owner)

    @property
    def __cuda_array_interface__(self) -> dict:
        # bfloat16 has no typestr of its own: it is read as 16-bit integers (see backends/pytorch.py)
        typestr = "<i2" if self.dtype.kind == "V" else self.dtype.str
        return {"shape": self.shape, "typestr": typestr, "data": (self.pointer, False), "version": 3,
                "strides": None}

    def to_host(self) -> np.ndarray:
        array = np.empty(self.shape, self.dtype)
        copy(host_pointer(array), self.pointer, self.nbytes, self.device_id)
        return array


def host_pointer(array: np.ndarray) -> int:
    """The address of a C-contiguous host array's first byte."""
    return array.__array_interface__["data"][0]
