"""IREE devices for run and serve: the drivers, opening them, and caches allocated on them."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from irforge.errors import ConfigError
from irforge.facts.config import KV_CACHE_DTYPES, storage_dtype
from irforge.facts.targets import TARGETS
from irforge.formats.dtypes import BY_NAME

# The drivers the compile targets run on (each target names its own), and the spellings users
# reach for.
DRIVERS = tuple(dict.fromkeys(t.driver for t in TARGETS.values()))
CPU_DRIVER = TARGETS["cpu"].driver  # local-task: IREE's multithreaded CPU driver
DRIVER_ALIASES = {"cpu": CPU_DRIVER, "rocm": "hip", "amdgpu": "hip", "nvidia": "cuda"}


def normalize_driver(name: str) -> str:
    """A driver name or alias (cpu, rocm) as IREE spells it; ConfigError for anything else."""
    key = name.strip().lower()
    key = DRIVER_ALIASES.get(key, key)
    if key not in DRIVERS:
        known = ", ".join([*DRIVERS, *DRIVER_ALIASES])
        raise ConfigError(f"unknown device {name!r}; known devices: {known}")
    return key


def iree_reason(error: Exception) -> str:
    """IREE's first line, less its source location, status code and advice.

    'c/runtime/.../cuda_dynamic_symbols.c:66: UNAVAILABLE; CUDA driver library ... not available;
    please ensure installed ...' -> "CUDA driver library ... not available".
    """
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    first = re.sub(r"^.*?\.c:\d+: ", "", first)
    first = re.sub(r"^Error creating driver: ", "", first)
    first = re.sub(r"^.*?\.c:\d+: ", "", first)
    first = re.sub(r"^[A-Z_]+; ", "", first)
    first = re.split(r"[;:]\s*please ensure", first)[0]
    return first.rstrip(":; ")[:200]


# prctl(2) PR_FUTEX_HASH (Linux 6.16+): a process's private futex hash
PR_FUTEX_HASH, FUTEX_SET_SLOTS, FUTEX_GET_SLOTS = 78, 1, 2
# the kernel's own sizing at full load: 4 slots per CPU, a power of two, at least 16
FUTEX_SLOTS = max(16, 1 << (4 * (os.cpu_count() or 1) - 1).bit_length())


def fix_futex_hash() -> int | None:
    """Give this process, once and before IREE starts its threads, the private futex hash the
    kernel would grow it to, so that it never moves again.

    IREE 3.13's io_uring proactor waits on futexes inside the ring. Kernels with per-process
    futex hashes (6.16+) install a private hash at a process's second thread and resize it as
    threads are added; a wait armed in the ring across such a move can miss its wake-up
    (lalinsky/zio#402 reproduces it in C on 6.17), and a CI run hung so: every thread in a
    futex wait, one in io_cqring_wait. A hash the process sets itself is not resized. (The
    global hash never moves either; neither changed a decode step measurably here,
    bench/futex_hash.py. A private one keeps other processes' futexes apart, as the kernel
    meant.) Returns the slots, or None where the kernel has no such hashes or refused."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    have = libc.prctl(PR_FUTEX_HASH, FUTEX_GET_SLOTS, 0, 0, 0)
    if have < 0:
        return None
    if have != FUTEX_SLOTS and libc.prctl(PR_FUTEX_HASH, FUTEX_SET_SLOTS, FUTEX_SLOTS, 0, 0):
        return None
    return FUTEX_SLOTS


def open_devices(driver: str, device_ids: list[int] | None, count: int) -> list[Any]:
    """`count` devices of `driver` (the first ones, or `device_ids`), as iree.runtime HalDevices.

    Raises:
        ConfigError: one line saying which driver or device is missing and what it needs.
    """
    import iree.runtime as rt

    fix_futex_hash()  # before IREE starts its proactor threads
    driver = normalize_driver(driver)
    if device_ids is not None and len(device_ids) != count:
        raise ConfigError(f"the program spans {count} device(s); got {len(device_ids)} device ids")
    try:
        drv = rt.get_driver(driver)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(
            f"the {driver} driver cannot start on this machine: {iree_reason(e)}; "
            "pick another --device"
        ) from None
    if driver == CPU_DRIVER and not device_ids:
        return [drv.create_default_device() for _ in range(count)]  # CPU devices are all alike
    try:
        infos = drv.query_available_devices()
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot list the {driver} devices: {iree_reason(e)}") from None
    ids = device_ids if device_ids is not None else list(range(count))
    if not infos:
        raise ConfigError(f"no {driver} device found on this machine")
    bad = [i for i in ids if not 0 <= i < len(infos)]
    if bad:
        raise ConfigError(
            f"{driver} device {bad[0]} does not exist: this machine has {len(infos)} "
            f"(ids 0..{len(infos) - 1})"
        )
    if len(infos) < count:
        raise ConfigError(
            f"the program spans {count} {driver} devices; this machine has {len(infos)}"
        )
    try:
        return [drv.create_device(infos[i]["device_id"]) for i in ids]
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot open {driver} device(s) {ids}: {iree_reason(e)}") from None


def cache_bytes(dtype: str) -> int:
    """Bytes per element of a KV-cache dtype (the dtype table's itemsize)."""
    if dtype not in KV_CACHE_DTYPES:
        raise ConfigError(
            f"unsupported KV-cache dtype {dtype!r}; known: {', '.join(KV_CACHE_DTYPES)}"
        )
    return BY_NAME[storage_dtype(dtype)].itemsize


def allocate_cache(device: Any, pages: int, page_elements: int, dtype: str) -> Any:
    """A zeroed [pages, page_elements] slab in device-local memory, zeroed by the device itself.

    Nothing of its size passes through the host: the buffer is allocated where the programs run
    and a fill command clears it, so a cache can be as large as the device's memory. Zeroing
    matters: attention weighs unwritten slots by 0, and 0 times garbage can be NaN.
    """
    import iree.runtime as rt
    import numpy as np

    nbytes = pages * page_elements * cache_bytes(dtype)
    try:
        buffer = device.allocator.allocate_buffer(
            memory_type=rt.MemoryType.DEVICE_LOCAL,
            allowed_usage=rt.BufferUsage.DEFAULT,
            allocation_size=nbytes,
        )
    except (ValueError, RuntimeError) as e:
        raise ConfigError(
            f"cannot allocate a {nbytes / 2**30:.2f} GiB KV cache ({pages} pages) on the device: "
            f"{iree_reason(e)}; ask for fewer pages"
        ) from None
    commands = rt.HalCommandBuffer(device)
    commands.fill(buffer, np.zeros(1, np.uint32), end=True)  # a 4-byte pattern: nbytes % 4 == 0
    done = device.create_semaphore(0)
    device.queue_execute(commands, wait_semaphores=rt.HalFence(1), signal_semaphores=[(done, 1)])
    fence = rt.HalFence(1)
    fence.insert(done, 1)
    fence.wait()
    element = getattr(rt.HalElementType, BY_NAME[storage_dtype(dtype)].hal)
    view = rt.HalBufferView(buffer, [pages, page_elements], element)
    return rt.DeviceArray(device, view)
