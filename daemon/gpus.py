"""The NVIDIA GPUs this process can use, asked of the driver's own libraries through ctypes, so that no
Python package is needed: how many there are (CUDA driver; honours CUDA_VISIBLE_DEVICES) and their
utilization and memory (NVML), for the metrics. No driver, no GPUs: 0 and [], never an error."""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass


@functools.cache
def count() -> int:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    devices = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(devices)) != 0:
        return 0
    return devices.value


@dataclass
class GpuReading:
    uuid: str
    utilization: float     # 0 to 1, over the driver's last sample period
    memory_total: int      # bytes
    memory_used: int


class _Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


@functools.cache
def _nvml():
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    return nvml if nvml.nvmlInit_v2() == 0 else None


def readings() -> list[GpuReading]:
    nvml = _nvml()
    if nvml is None:
        return []
    found = ctypes.c_uint(0)
    if nvml.nvmlDeviceGetCount_v2(ctypes.byref(found)) != 0:
        return []
    out = []
    for index in range(found.value):
        handle = ctypes.c_void_p()
        uuid = ctypes.create_string_buffer(96)
        utilization, memory = _Utilization(), _Memory()
        if (nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0
                or nvml.nvmlDeviceGetUUID(handle, uuid, len(uuid)) != 0
                or nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0):
            continue
        busy = nvml.nvmlDeviceGetUtilizationRates(handle, ctypes.byref(utilization)) == 0
        out.append(GpuReading(uuid.value.decode(), utilization.gpu / 100 if busy else 0.0,
                              memory.total, memory.used))
    return out
