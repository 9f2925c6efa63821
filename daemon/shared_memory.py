"""Client shared memory (Triton's system and CUDA shared-memory extensions): regions that clients
register by name, mapped once, from which inputs are read in place and into which outputs are written.

System and CUDA regions share one namespace. Every offset and size a request names is checked against
its region before any byte is touched. A region that requests in flight still use stays mapped until
the last of them is done, so unregistering it never pulls memory from under a running model."""
from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass

import numpy as np

from naiad.daemon import cuda, datatypes
from naiad.daemon.errors import InvalidArgument, NotFound, Unimplemented
from naiad.daemon.inference import InferRequest, Placed, RegionSlice, SharedInput, Tensor

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
# naiad's own segments (its Python model workers'): never a client's to map
_OWN_PREFIX = "naiad-"


@dataclass(eq=False)
class Region:
    name: str
    byte_size: int
    users: int = 0              # requests in flight that use it
    unregistered: bool = False

    def status(self) -> dict:
        raise NotImplementedError

    def _release_memory(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        self.users -= 1
        self._unmap_if_unused()

    def retire(self) -> None:
        """No longer for new requests; unmapped once those using it are done."""
        self.unregistered = True
        self._unmap_if_unused()

    def _unmap_if_unused(self) -> None:
        if self.unregistered and self.users == 0:
            self._release_memory()

    def check(self, kind: str, name: str, where: RegionSlice) -> None:
        if where.offset + where.byte_size > self.byte_size:
            raise InvalidArgument(
                f"{kind} '{name}': offset {where.offset} and byte size {where.byte_size} reach past the "
                f"end of shared-memory region '{self.name}' ({self.byte_size} bytes)")


@dataclass(eq=False)
class SystemRegion(Region):
    key: str = ""
    offset: int = 0
    map: mmap.mmap | None = None

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def bytes(self, where: RegionSlice) -> memoryview:
        start = self.offset + where.offset
        return memoryview(self.map)[start:start + where.byte_size]

    def _release_memory(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a model still holds an array of it: the mapping goes with that array
            pass


@dataclass(eq=False)
class CudaRegion(Region):
    device_id: int = 0
    pointer: int = 0

    def status(self) -> dict:
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}

    def _release_memory(self) -> None:
        cuda.close_ipc_handle(self.pointer, self.device_id)


KINDS = {"system": SystemRegion, "cuda": CudaRegion}


class SystemPlace:
    """An output's bytes in a system region."""
    device_id = None

    def __init__(self, region: SystemRegion, where: RegionSlice):
        self.region, self.where = region, where

    def write(self, name: str, tensor: Tensor) -> Placed:
        datatype = _datatype_of(name, tensor)
        target = self.region.bytes(self.where)
        if datatype is datatypes.BYTES:
            raw = datatypes.to_raw(tensor)
            _fits(name, len(raw), self.where)
            target[:len(raw)] = raw
            size = len(raw)
        else:
            size = tensor.nbytes
            _fits(name, size, self.where)
            view = np.frombuffer(target, np.uint8, size)
            if isinstance(tensor, cuda.DeviceArray):
                cuda.copy(cuda.host_pointer(view), tensor.pointer, size, tensor.device_id)
            else:
                view[:] = np.ascontiguousarray(tensor).reshape(-1).view(np.uint8)
        return Placed(datatype, tuple(tensor.shape), RegionSlice(self.where.region, self.where.offset, size))


class CudaPlace:
    """An output's bytes in a CUDA region."""

    def __init__(self, region: CudaRegion, where: RegionSlice):
        self.region, self.where = region, where
        self.device_id = region.device_id
        self.pointer = region.pointer + where.offset

    def write(self, name: str, tensor: Tensor) -> Placed:
        datatype = _datatype_of(name, tensor)
        if datatype is datatypes.BYTES:
            raise InvalidArgument(f"output '{name}': BYTES tensors cannot be placed in CUDA shared memory")
        size = tensor.nbytes
        _fits(name, size, self.where)
        if isinstance(tensor, cuda.DeviceArray):
            source = tensor.pointer
        else:
            tensor = np.ascontiguousarray(tensor)
            source = cuda.host_pointer(tensor)
        cuda.copy(self.pointer, source, size, self.device_id)
        return Placed(datatype, tuple(tensor.shape), RegionSlice(self.where.region, self.where.offset, size))


def _datatype_of(name: str, tensor: Tensor) -> datatypes.DataType:
    found = datatypes.of_array(tensor)
    if found is None:
        raise InvalidArgument(f"output '{name}': data type {tensor.dtype} has no protocol name")
    return found


def _fits(name: str, size: int, where: RegionSlice) -> None:
    if size > where.byte_size:
        raise InvalidArgument(f"output '{name}' takes {size} bytes; the {where.byte_size} bytes given "
                              f"in shared-memory region '{where.region}' cannot hold it")


class SharedMemory:
    """The registered regions. Used from the event loop only."""

    def __init__(self, allowed: bool):
        self.allowed = allowed
        self.regions: dict[str, Region] = {}
        self.internal: dict[str, SystemRegion] = {}   # frontend processes' tensor arenas, by file name

    def check_allowed(self) -> None:
        if not self.allowed:
            raise Unimplemented("client shared memory is turned off on this server; start it with "
                                "--allow-client-shm true to use it")

    def _check_new(self, name: str, byte_size: int) -> None:
        self.check_allowed()
        if not name:
            raise InvalidArgument("a shared-memory region needs a name")
        if name in self.regions:
            raise InvalidArgument(f"shared-memory region '{name}' is already registered; unregister "
                                  f"it first")
        if byte_size <= 0:
            raise InvalidArgument(f"shared-memory region '{name}': byte_size must be > 0, got {byte_size}")

    # --- registration -----------------------------------------------------------------------------

    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_new(name, byte_size)
        file_name = key.removeprefix("/")
        if not file_name or "/" in file_name or file_name in (".", "..") or file_name.startswith(_OWN_PREFIX):
            raise InvalidArgument(f"shared-memory region '{name}': '{key}' is not a shared-memory key "
                                  f"a client may register (expected a name like /input_data)")
        if offset < 0:
            raise InvalidArgument(f"shared-memory region '{name}': offset must be >= 0, got {offset}")
        self.regions[name] = _map_system(name, os.path.join(SHM_DIR, file_name), key, offset, byte_size)
        log.info("registered system shared-memory region '%s' (%s, %d bytes)", name, key, byte_size)

    def add_internal(self, path: str, byte_size: int) -> None:
        """Map a frontend process's tensor arena."""
        name = os.path.basename(path)
        self.internal[name] = _map_system(name, path, path, 0, byte_size)

    def remove_internal(self, path: str) -> None:
        region = self.internal.pop(os.path.basename(path), None)
        if region is not None:
            region.retire()

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self._check_new(name, byte_size)
        if device_id < 0:
            raise InvalidArgument(f"shared-memory region '{name}': device_id must be >= 0, got {device_id}")
        pointer = cuda.open_ipc_handle(raw_handle, device_id)
        self.regions[name] = CudaRegion(name, byte_size, device_id=device_id, pointer=pointer)
        log.info("registered CUDA shared-memory region '%s' (GPU %d, %d bytes)", name, device_id, byte_size)

    def unregister(self, kind: str, name: str = "") -> None:
        """One region of this kind ("system" or "cuda"), or every one when name is empty."""
        self.check_allowed()
        if name:
            self._find(kind, name)
        chosen = [r for r in self.regions.values() if isinstance(r, KINDS[kind]) and name in ("", r.name)]
        for found in chosen:
            del self.regions[found.name]
            found.retire()

    def status(self, kind: str, name: str = "") -> list[dict]:
        self.check_allowed()
        if name:
            return [self._find(kind, name).status()]
        return [r.status() for r in self.regions.values() if isinstance(r, KINDS[kind])]

    def close(self) -> None:
        """Unregister every region (at shutdown)."""
        if self.allowed:
            for kind in KINDS:
                self.unregister(kind)

    def _find(self, kind: str, name: str) -> Region:
        region = self.regions.get(name)
        if not isinstance(region, KINDS[kind]):
            raise NotFound(f"no {'CUDA' if kind == 'cuda' else kind} shared-memory region '{name}' is "
                           f"registered")
        return region

    # --- requests ---------------------------------------------------------------------------------

    def attach(self, request: InferRequest) -> list[Region]:
        """Read the request's shared-memory inputs in place and resolve where its outputs go. The
        regions returned are in use until `detach`."""
        used: list[Region] = []
        try:
            for name, value in request.inputs.items():
                if isinstance(value, SharedInput):
                    region = self._use("input", name, value.where, used, value.internal)
                    request.inputs[name] = _read(region, name, value)
            for output in request.requested_outputs or ():
                if output.where is not None:
                    region = self._use("output", output.name, output.where, used)
                    request.output_places[output.name] = (
                        SystemPlace(region, output.where) if isinstance(region, SystemRegion)
                        else CudaPlace(region, output.where))
        except BaseException:
            self.detach(used)
            raise
        return used

    @staticmethod
    def detach(used: list[Region]) -> None:
        for region in used:
            region.release()

    def _use(self, kind: str, name: str, where: RegionSlice, used: list[Region], internal: bool = False
             ) -> Region:
        if internal:
            region = self.internal.get(where.region)
        else:
            self.check_allowed()
            region = self.regions.get(where.region)
        if region is None:
            raise InvalidArgument(f"{kind} '{name}': no shared-memory region '{where.region}' is registered")
        region.check(kind, name, where)
        region.users += 1
        used.append(region)
        return region


def _map_system(name: str, path: str, key: str, offset: int, byte_size: int) -> SystemRegion:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError as e:
        raise InvalidArgument(f"shared-memory region '{name}': cannot open key '{key}' "
                              f"({e.strerror}); create it before registering it")
    try:
        size = os.fstat(fd).st_size
        if offset + byte_size > size:
            raise InvalidArgument(f"shared-memory region '{name}': offset {offset} and byte_size "
                                  f"{byte_size} reach past the end of '{key}' ({size} bytes)")
        mapped = mmap.mmap(fd, offset + byte_size)
    finally:
        os.close(fd)
    return SystemRegion(name, byte_size, key=key, offset=offset, map=mapped)


def _read(region: Region, name: str, shared: SharedInput) -> Tensor:
    datatype, shape, where = shared.datatype, shared.shape, shared.where
    count = datatypes.element_count(shape)
    if datatype is not datatypes.BYTES and where.byte_size != count * datatype.itemsize:
        raise InvalidArgument(f"input '{name}': shape {list(shape)} of {datatype} needs "
                              f"{count * datatype.itemsize} bytes, shared_memory_byte_size is "
                              f"{where.byte_size}")
    if isinstance(region, CudaRegion):
        if datatype is datatypes.BYTES:
            raise InvalidArgument(f"input '{name}': BYTES tensors cannot be read from CUDA shared memory")
        return cuda.DeviceArray(region.pointer + where.offset, shape, datatype.numpy, region.device_id,
                                region)
    array = datatypes.from_raw(name, datatype, list(shape), region.bytes(where))
    if array.dtype != object:
        array.flags.writeable = False
    return array
