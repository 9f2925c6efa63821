"""How many NVIDIA GPUs this process can use, asked of the CUDA driver (honours CUDA_VISIBLE_DEVICES).
No driver, no GPUs: the answer is 0, never an error."""
from __future__ import annotations

import ctypes
import functools


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
