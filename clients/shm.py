"""Shared-memory regions without bookkeeping: a region is created on this host, filled, registered with
the server, used as an input's data or an output's place, and unregistered and released, by one
context manager. System regions are POSIX shared memory (/dev/shm); CUDA regions are device memory
shared through a CUDA IPC handle (the CUDA driver through ctypes; arrays viewing them are torch tensors
or CuPy arrays, whichever is installed with CUDA)."""
from __future__ import annotations

import asyncio
import ctypes
import functools
import inspect
import itertools
import math
import mmap
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from naiad.clients import tensors
from naiad.clients.calls import RegionBase
from naiad.clients.errors import ClientError

SHM_DIR = "/dev/shm"
_numbers = itertools.count()
# Triton lets go of a request's regions just after sending its response, and refuses to unregister a
# region still held: a region left right after a call waits for that, up to about a second.
_IN_USE_WAITS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, None)


def _raise_unless_in_use(error: ClientError, wait: float | None) -> None:
    if wait is None or "in use" not in str(error):
        raise error


def create(client, data, byte_size: int | None, device: str | int | None) -> SystemRegion | CudaRegion:
    if device is None or device == "cpu":
        return SystemRegion(client, data, byte_size)
    return CudaRegion(client, data, byte_size, _device_id(device))


def _device_id(device: str | int) -> int:
    if isinstance(device, int):
        return device
    kind, _, number = str(device).partition(":")
    if kind != "cuda" or not (number.isdigit() or number == ""):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got '{device}'")
    return int(number or 0)


class _Region(RegionBase):
    """What both kinds share: the tensor written into the region (its datatype and shape make the
    region an input), and registration with the server as a context manager."""
    kind = ""

    def __init__(self, client, data, byte_size: int | None):
        self.name = f"naiad_client_{os.getpid()}_{next(_numbers)}_{secrets.token_hex(3)}"
        self.datatype: str | None = None
        self.shape: list[int] | None = None
        self.nbytes = 0
        array = None if data is None else self._as_source(data)
        size = byte_size if byte_size is not None else self._source_bytes(array) if array is not None else 0
        if size <= 0:
            raise ValueError("a shared-memory region needs data or a byte_size > 0")
        self.byte_size = size
        self._client = client
        self._allocate()
        if array is not None:
            try:
                self.write(array)
            except BaseException:
                self._release()
                raise

    def array(self):
        """The tensor last written into the region, viewing it."""
        if self.datatype is None:
            raise ValueError(f"shared-memory region '{self.name}' holds no tensor yet")
        return self.view(self.datatype, self.shape, self.nbytes)

    def _check_fits(self, nbytes: int) -> None:
        if nbytes > self.byte_size:
            raise ValueError(f"shared-memory region '{self.name}': {nbytes} bytes do not fit its "
                             f"{self.byte_size} bytes")

    # --- registration -----------------------------------------------------------------------------

    def _register(self):
        raise NotImplementedError

    def __enter__(self):
        try:
            registered = self._register()
        except BaseException:
            self._release()
            raise
        if inspect.isawaitable(registered):
            registered.close()
            self._release()
            raise TypeError("this region belongs to an AsyncClient: use `async with`")
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            for wait in _IN_USE_WAITS:
                try:
                    self._client.unregister_shm(self.kind, self.name)
                    break
                except ClientError as e:
                    _raise_unless_in_use(e, wait)
                time.sleep(wait)
        except ClientError:
            if exc is None:
                raise
        finally:
            self._release()

    async def __aenter__(self):
        try:
            await self._register()
        except BaseException:
            self._release()
            raise
        return self

    async def __aexit__(self, exc_type, exc, traceback) -> None:
        try:
            for wait in _IN_USE_WAITS:
                try:
                    await self._client.unregister_shm(self.kind, self.name)
                    break
                except ClientError as e:
                    _raise_unless_in_use(e, wait)
                await asyncio.sleep(wait)
        except ClientError:
            if exc is None:
                raise
        finally:
            self._release()

    def __repr__(self) -> str:
        held = f"{self.datatype}{self.shape}" if self.datatype else "no tensor"
        return f"<{type(self).__name__} '{self.name}' {self.byte_size} bytes, {held}>"

    # --- what each kind does its own way ----------------------------------------------------------

    def _as_source(self, data):
        raise NotImplementedError

    def _source_bytes(self, array) -> int:
        raise NotImplementedError

    def _allocate(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


class SystemRegion(_Region):
    """A region of POSIX shared memory (/dev/shm/<name>, readable by this user only)."""
    kind = "system"

    def _as_source(self, data):
        return tensors.as_array("region", data)

    def _source_bytes(self, array: np.ndarray) -> int:
        return len(tensors.to_raw(array)) if array.dtype.kind in "SUO" else array.nbytes

    def _allocate(self) -> None:
        self.key = "/" + self.name
        self._path = os.path.join(SHM_DIR, self.name)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, self.byte_size)
            self._map = mmap.mmap(fd, self.byte_size)
        except BaseException:
            os.unlink(self._path)
            raise
        finally:
            os.close(fd)

    def _register(self):
        return self._client.register_system_shm(self.name, self.key, self.byte_size)

    def write(self, data) -> None:
        """Put a tensor into the region (from its start); it is then the region's tensor as an input."""
        array = tensors.as_array("region", data)
        datatype = tensors.datatype_of(array)
        if datatype == "BYTES":
            raw = tensors.to_raw(array)
            self._check_fits(len(raw))
            self._map[:len(raw)] = raw
            nbytes = len(raw)
        else:
            nbytes = array.nbytes
            self._check_fits(nbytes)
            np.frombuffer(self._map, array.dtype, array.size).reshape(array.shape)[...] = array
        self.datatype, self.shape, self.nbytes = datatype, list(array.shape), nbytes

    def view(self, datatype: str, shape: list[int], nbytes: int | None = None) -> np.ndarray:
        """The region's bytes as an array (writable, no copy; BYTES elements are copied out)."""
        if datatype == "BYTES":
            return tensors.bytes_from_raw(memoryview(self._map)[:nbytes or self.byte_size],
                                          math.prod(shape)).reshape(shape)
        dtype = tensors.DTYPES[datatype]
        count = math.prod(shape)
        self._check_fits(count * dtype.itemsize)
        return np.frombuffer(self._map, dtype, count).reshape(shape)

    def _release(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:   # arrays still view it: the mapping goes with the last of them
                pass
            self._map = None
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass


# --- CUDA ----------------------------------------------------------------------------------------

class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_ubyte * 64)]


@functools.cache
def _driver():
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise RuntimeError("CUDA shared memory needs an NVIDIA GPU and its driver (libcuda.so.1); this "
                           "machine has none") from None
    u64, pointer = ctypes.c_uint64, ctypes.POINTER
    lib.cuMemAlloc_v2.argtypes = [pointer(u64), ctypes.c_size_t]
    lib.cuMemFree_v2.argtypes = [u64]
    lib.cuIpcGetMemHandle.argtypes = [pointer(_IpcHandle), u64]
    lib.cuMemcpyHtoD_v2.argtypes = [u64, ctypes.c_void_p, ctypes.c_size_t]
    lib.cuMemcpyDtoD_v2.argtypes = [u64, u64, ctypes.c_size_t]
    lib.cuCtxPushCurrent_v2.argtypes = [ctypes.c_void_p]
    lib.cuCtxPopCurrent_v2.argtypes = [pointer(ctypes.c_void_p)]
    _check(lib, lib.cuInit(0), "cuInit")
    return lib


def _check(lib, status: int, what: str) -> None:
    if status != 0:
        text = ctypes.c_char_p()
        lib.cuGetErrorString(status, ctypes.byref(text))
        raise RuntimeError(f"CUDA {what}: {text.value.decode() if text.value else status}")


@functools.cache
def _context(device_id: int) -> ctypes.c_void_p:
    """The device's primary context: the one torch and CuPy use, so pointers are valid in both."""
    lib = _driver()
    device = ctypes.c_int()
    _check(lib, lib.cuDeviceGet(ctypes.byref(device), device_id), f"GPU {device_id}")
    context = ctypes.c_void_p()
    _check(lib, lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), f"GPU {device_id}")
    return context


class _OnDevice:
    """Runs driver calls with the device's primary context current, then restores the thread's own."""

    def __init__(self, device_id: int):
        self.lib, self.context = _driver(), _context(device_id)

    def __enter__(self):
        _check(self.lib, self.lib.cuCtxPushCurrent_v2(self.context), "cuCtxPushCurrent")
        return self.lib

    def __exit__(self, *exc) -> None:
        self.lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))


class _DeviceBytes:
    """`size` bytes of device memory, for torch and CuPy to view without a copy."""

    def __init__(self, pointer: int, size: int, owner):
        self.owner = owner
        self.__cuda_array_interface__ = {"shape": (size,), "typestr": "|u1", "data": (pointer, False),
                                         "version": 3, "strides": None, "stream": None}


@functools.cache
def _framework() -> str:
    """"torch" or "cupy": which one gives views of device memory here."""
    try:
        import torch
        if torch.cuda.is_available():
            return "torch"
    except ImportError:
        pass
    try:
        import cupy  # noqa: F401
        return "cupy"
    except ImportError:
        raise RuntimeError("CUDA shared-memory regions need CuPy or a CUDA build of torch") from None


class CudaRegion(_Region):
    """A region of a GPU's memory (its own allocation), shared with the server by CUDA IPC handle."""
    kind = "cuda"

    def __init__(self, client, data, byte_size: int | None, device_id: int):
        self.device_id = device_id
        self._framework = _framework()
        super().__init__(client, data, byte_size)

    def _as_source(self, data):
        found = _device_tensor(data)
        return found if found is not None else np.ascontiguousarray(tensors.as_array("region", data))

    def _source_bytes(self, source) -> int:
        return source.nbytes

    def _allocate(self) -> None:
        pointer = ctypes.c_uint64()
        handle = _IpcHandle()
        with _OnDevice(self.device_id) as lib:
            _check(lib, lib.cuMemAlloc_v2(ctypes.byref(pointer), self.byte_size), "cuMemAlloc")
            self.pointer = pointer.value
            status = lib.cuIpcGetMemHandle(ctypes.byref(handle), self.pointer)
            if status != 0:
                lib.cuMemFree_v2(self.pointer)
                self.pointer = 0
                _check(lib, status, "cuIpcGetMemHandle")
        self.raw_handle = bytes(handle.reserved)

    def _register(self):
        return self._client.register_cuda_shm(self.name, self.raw_handle, self.device_id, self.byte_size)

    def write(self, data) -> None:
        """Put a tensor into the region: a numpy array (copied up) or a torch tensor or CuPy array on
        the GPU (copied device to device)."""
        source = self._as_source(data)
        self._check_fits(source.nbytes)
        with _OnDevice(self.device_id) as lib:
            if isinstance(source, np.ndarray):
                datatype = tensors.datatype_of(source)
                if datatype == "BYTES":
                    raise ValueError("BYTES tensors cannot go into CUDA shared memory")
                _check(lib, lib.cuMemcpyHtoD_v2(self.pointer, source.ctypes.data, source.nbytes),
                       "cuMemcpyHtoD")
            else:
                datatype = source.datatype
                _check(lib, lib.cuCtxSynchronize(), "cuCtxSynchronize")   # the source's pending work
                _check(lib, lib.cuMemcpyDtoD_v2(self.pointer, source.pointer, source.nbytes), "cuMemcpyDtoD")
                _check(lib, lib.cuCtxSynchronize(), "cuCtxSynchronize")
        self.datatype, self.shape, self.nbytes = datatype, list(source.shape), source.nbytes

    def view(self, datatype: str, shape: list[int], nbytes: int | None = None) -> Any:
        """The region's bytes as a torch tensor or CuPy array on its GPU (no copy)."""
        if datatype == "BYTES":
            raise ValueError("BYTES tensors cannot be read from CUDA shared memory")
        dtype = tensors.DTYPES[datatype]
        size = math.prod(shape) * dtype.itemsize
        self._check_fits(size)
        memory = _DeviceBytes(self.pointer, size, self)
        if self._framework == "torch":
            import torch
            flat = torch.as_tensor(memory, device=f"cuda:{self.device_id}")
            return flat.view(getattr(torch, _TORCH_NAMES.get(datatype, str(dtype)))).reshape(shape)
        import cupy
        return cupy.asarray(memory).view(dtype).reshape(shape)

    def _release(self) -> None:
        if self.pointer:
            with _OnDevice(self.device_id) as lib:
                lib.cuCtxSynchronize()
                lib.cuMemFree_v2(self.pointer)
            self.pointer = 0


_TORCH_NAMES = {"BOOL": "bool", "BF16": "bfloat16"}


@dataclass(frozen=True)
class _DeviceTensor:
    pointer: int
    nbytes: int
    shape: tuple
    datatype: str


def _device_tensor(data) -> _DeviceTensor | None:
    """A torch tensor or CuPy array on a GPU as a pointer and size; None for anything else."""
    if getattr(data, "is_cuda", False):                             # torch
        name = str(data.dtype).removeprefix("torch.")
        if not data.is_contiguous():
            raise ValueError("the device tensor must be contiguous")
        datatype = "BF16" if name == "bfloat16" else tensors.datatype_of(np.empty(0, np.dtype(name)))
        return _DeviceTensor(data.data_ptr(), data.numel() * data.element_size(), tuple(data.shape), datatype)
    if hasattr(type(data), "__cuda_array_interface__"):             # CuPy and the like
        if not data.flags.c_contiguous:
            raise ValueError("the device array must be contiguous")
        return _DeviceTensor(data.__cuda_array_interface__["data"][0], data.nbytes, tuple(data.shape),
                             tensors.datatype_of(np.empty(0, data.dtype)))
    return None
