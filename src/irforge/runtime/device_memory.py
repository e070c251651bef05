"""Free memory of a GPU, for the default KV-cache size (IREE's runtime does not report it).

NVIDIA: NVML (libnvidia-ml, shipped with the driver; needs no CUDA context). AMD: the HIP
runtime's hipMemGetInfo. Both through ctypes, so nothing is installed for them; None when the
library or the device is not there (the CPU, a machine without the driver).
"""

from __future__ import annotations

import ctypes
import ctypes.util

# Of the memory free once the weights are loaded, the share the cache takes: the rest is for
# the programs' transient buffers (vLLM's gpu_memory_utilization is 0.9 of the total).
CACHE_SHARE = 0.85


def _nvml_free(index: int) -> int | None:
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None

    class Memory(ctypes.Structure):
        _fields_ = [
            ("total", ctypes.c_ulonglong),
            ("free", ctypes.c_ulonglong),
            ("used", ctypes.c_ulonglong),
        ]

    handle, info = ctypes.c_void_p(), Memory()
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
            return None
        if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(info)) != 0:
            return None
        return int(info.free)
    finally:
        nvml.nvmlShutdown()


def _hip_free(index: int) -> int | None:
    name = ctypes.util.find_library("amdhip64") or "libamdhip64.so"
    try:
        hip = ctypes.CDLL(name)
    except OSError:
        return None
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    if hip.hipSetDevice(index) != 0:
        return None
    if hip.hipMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
        return None
    return int(free.value)


def free_bytes(driver: str, index: int) -> int | None:
    """Free memory of device `index` of an IREE driver (cuda, hip), or None if unknown."""
    if driver == "cuda":
        return _nvml_free(index)
    if driver == "hip":
        return _hip_free(index)
    return None


def default_pages(free: list[int | None], page_bytes: int) -> int | None:
    """Pages for CACHE_SHARE of the least free device's memory, or None if any is unknown."""
    if not free or any(f is None for f in free):
        return None
    return max(2, int(CACHE_SHARE * min(f for f in free if f is not None)) // page_bytes)
