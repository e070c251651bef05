"""Session: a compiled artifact folder loaded into iree.runtime, with its cache on the device."""

from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any

import numpy as np

from irforge.artifacts.abi import (
    DECODE,
    PREFILL,
    PREFILL_WHOLE,
    SCORE,
    SCORE_FUNCTION,
    VERIFY,
    Entry,
)
from irforge.artifacts.files import PARAMETER_SCOPE, folder_file
from irforge.artifacts.manifest import Compiled, Manifest
from irforge.errors import InputError, ManifestError
from irforge.facts.targets import runtime_version, version_text
from irforge.formats.irpa import read_irpa
from irforge.runtime.device_memory import default_pages, free_bytes
from irforge.runtime.devices import (
    CPU_DRIVER,
    allocate_cache,
    cache_bytes,
    iree_reason,
    normalize_driver,
    open_devices,
)
from irforge.runtime.pages import PageAllocator


def _pick_compiled(manifest: Manifest, folder: Path, driver: str, vmfb: Path | None) -> Path:
    if vmfb is not None:
        return Path(vmfb)
    ours = version_text(runtime_version())
    for_device: list[Compiled] = [c for c in manifest.compiled if c.driver == driver]
    matches = [c for c in for_device if c.compiler == ours]
    if not matches:
        built = ", ".join(f"{c.vmfb} ({c.driver}, IREE {c.compiler})" for c in manifest.compiled)
        raise ManifestError(
            f"{folder}: no program compiled for device {driver!r} by IREE {ours}, the runtime "
            f"installed (compiled: {built or 'none'}); "
            f"run `irforge compile {folder} --target {_target_for(driver)}` first"
        )
    return folder_file(folder, matches[-1].vmfb)


class Session:
    """The programs of an artifact folder, ready to call: `prefill` and `decode` per batch size.

    Args:
        folder: written by `irforge export` and `irforge compile`.
        device: IREE driver name: local-task (CPU), cuda or hip.
        device_ids: which devices of that driver (default: the first N).
        vmfb: a VMFB to use instead of the manifest's match for the device.
        page_count: cache pages to allocate (default on cuda/hip: CACHE_SHARE of the memory
            free once the weights are loaded, on the least free device; elsewhere, or if the
            driver does not say, the export's device_block_count).
        cache_gib: instead of page_count, as many pages as fit in this many GiB per device.
        parameters: a ready iree.runtime.ParameterIndex to use instead of the folder's archives
            (benchmarks fill one with random weights in memory).

    The cache slabs live in device memory for the session's whole life: each call passes them
    to the program, which updates them in place; only token ids go in and logits come out.
    """

    def __init__(
        self,
        folder: Path,
        *,
        device: str = CPU_DRIVER,
        device_ids: list[int] | None = None,
        vmfb: Path | None = None,
        page_count: int | None = None,
        parameters: Any = None,
        cache_gib: float | None = None,
    ) -> None:
        import iree.runtime as rt

        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        self.config, self.options = self.manifest.config, self.manifest.options
        self.prefill_position = self.manifest.prefill_position
        device = normalize_driver(device)
        vmfb_path = _pick_compiled(self.manifest, self.folder, device, vmfb)
        if not vmfb_path.is_file():
            raise InputError(f"{vmfb_path}: no such file; run `irforge compile` first")
        if parameters is None and not self.manifest.parameters:
            raise ManifestError(
                f"{self.folder}: no parameters (exported from a preset or config alone); "
                "export from a converted .irpa archive to run it"
            )
        self.instance = rt.VmInstance()
        self.tp = self.options.tensor_parallelism_size
        self.devices = open_devices(device, device_ids, self.tp)
        self.device = self.devices[0]  # where inputs and logits live
        index = parameters
        if index is None:
            index = rt.ParameterIndex()
            for name in self.manifest.parameters:
                path = folder_file(self.folder, name)
                read_irpa(path)  # IREE's parser has only happy-path errors
                index.load(str(path))
        params = rt.create_io_parameters_module(
            self.instance, index.create_provider(scope=PARAMETER_SCOPE)
        )
        hal = rt.create_hal_module(self.instance, devices=self.devices)
        self.module = _load_module(rt, self.instance, vmfb_path)
        try:
            self.context = rt.VmContext(self.instance, modules=[hal, params, self.module])
        except (ValueError, RuntimeError) as e:
            raise _context_error(e, vmfb_path, device) from None
        self._functions: dict[str, Any] = {}
        # One slab per device, each holding that device's share of the kv heads.
        page_elements = self.config.page_elements(self.options.block_seq_stride, self.tp)
        cache_dtype = self.options.kv_cache_dtype or self.config.dtype  # manifests hold it resolved
        page_bytes = page_elements * cache_bytes(cache_dtype)
        self.page_count = page_count or self.options.device_block_count
        if cache_gib is not None:
            self.page_count = int(cache_gib * 2**30 // page_bytes)
        elif page_count is None:  # on a GPU: a share of what the weights left free
            ids = device_ids or list(range(self.tp))
            found = default_pages([free_bytes(device, i) for i in ids], page_bytes)
            self.page_count = found or self.page_count
        if self.page_count < 2:
            raise InputError(
                f"a KV cache of {self.page_count} pages holds nothing: page 0 is scratch, so "
                "at least 2 are needed (a page is "
                f"{page_elements * cache_bytes(cache_dtype) / 2**20:.1f} MiB per device)"
            )
        self.pages = PageAllocator(self.page_count)
        self.caches = [
            allocate_cache(d, self.page_count, page_elements, cache_dtype) for d in self.devices
        ]

    def close(self) -> None:
        """Release the device, its buffers and the loaded program now, in order, rather than
        at interpreter exit (where the runtime's bindings report them as leaked)."""
        self._functions.clear()
        for name in ("caches", "context", "module", "device", "devices", "instance"):
            if hasattr(self, name):
                delattr(self, name)
        gc.collect()

    @property
    def can_score(self) -> bool:
        """Whether `score` works: a single-device program exported by this irforge."""
        return bool(self.prefill_position and self.module.lookup_function(SCORE_FUNCTION))

    def _function(self, name: str) -> Any:
        import iree.runtime as rt

        if name not in self._functions:
            fn = self.module.lookup_function(name)
            if fn is None:
                raise ManifestError(f"{self.folder}: the program has no function {name}")
            self._functions[name] = rt.FunctionInvoker(self.context, self.device, fn)
        return self._functions[name]

    def prefill(
        self,
        tokens: np.ndarray,
        start_pos: np.ndarray,
        seq_lens: np.ndarray,
        block_ids: np.ndarray,
    ) -> Any:
        """prefill_bs{N}: logits [N, 1, vocab] of each row's last position (or (values,
        indices) if exported with top_k). A folder exported before prefill took start_pos
        (`prefill_position` false) prefills whole prompts only."""
        args = dict(zip(PREFILL.args, (tokens, start_pos, seq_lens, block_ids), strict=True))
        if self.prefill_position:
            return self._call(PREFILL, args)
        if np.any(start_pos):
            raise InputError(
                f"{self.folder}: its prefill programs start at position 0 only; "
                "re-export it for chunked prefill and prefix caching"
            )
        return self._call(PREFILL_WHOLE, args)

    def score(
        self, tokens: np.ndarray, start_pos: np.ndarray, seq_lens: np.ndarray, block_ids: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """score_bs1: a one-row prefill plus the prompt's log-probabilities (PagedLlama.score):
        (logits [1, 1, vocab], next-token logprobs [1, S], top values, top ids [1, S, 20])."""
        if not self.can_score:
            raise InputError(
                f"{self.folder}: its program cannot score prompts (no {SCORE_FUNCTION}; "
                "single-device folders exported by this irforge have it)"
            )
        args = dict(zip(SCORE.args, (tokens, start_pos, seq_lens, block_ids), strict=True))
        return self._call(SCORE, args)  # type: ignore[no-any-return]

    def decode(
        self, tokens: np.ndarray, seq_lens: np.ndarray, starts: np.ndarray, block_ids: np.ndarray
    ) -> Any:
        """decode_bs{N}: logits [N, 1, vocab] (or (values, indices) if exported with top_k)."""
        args = dict(zip(DECODE.args, (tokens, seq_lens, starts, block_ids), strict=True))
        return self._call(DECODE, args)

    def verify(self, tokens: np.ndarray, starts: np.ndarray, block_ids: np.ndarray) -> Any:
        """verify_bs{N} (speculative decoding): logits [N, k + 1, vocab] (or (values,
        indices)) of each row's last token and the k proposed after it, from `starts`."""
        args = dict(zip(VERIFY.args, (tokens, starts, block_ids), strict=True))
        return self._call(VERIFY, args)

    def _call(self, entry: Entry, args: dict[str, np.ndarray]) -> Any:
        """Call `entry` at the batch size of its tokens: its integer arguments in the ABI's
        order (abi.py), then the cache slabs."""
        fn = self._function(entry.name(args["tokens"].shape[0]))
        ints = [args[name].astype(np.int64) for name in entry.args]
        return _host(fn(*ints, *self.caches))


def _target_for(driver: str) -> str:
    """A compile target whose programs run on `driver` (the table's first), for the hint."""
    from irforge.facts.targets import TARGETS

    return next((t.name for t in TARGETS.values() if t.driver == driver), "cpu")


def _load_module(rt: Any, instance: Any, vmfb: Path) -> Any:
    # Read-only: VmModule.mmap opens the file for writing too, and the file may not be ours.
    try:
        data = Path(vmfb).read_bytes()
    except OSError as e:
        raise InputError(f"{vmfb}: cannot read it ({e.strerror})") from None
    try:
        return rt.VmModule.copy_buffer(instance, data)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"{vmfb}: not a program IREE can load ({iree_reason(e)})") from None


def _context_error(error: Exception, vmfb: Path, device: str) -> InputError:
    """A VMFB for other devices (or a broken one), said in one line instead of IREE's IR dump."""
    text = str(error)
    wanted = re.search(r'#hal\.device\.target<"([\w-]+)"', text)
    if wanted and "INCOMPATIBLE" in text:
        return InputError(
            f"{vmfb}: compiled for {wanted[1]} devices, not {device}; pick the --device it was "
            "compiled for, or compile for this one"
        )
    return InputError(f"{vmfb}: cannot load it on {device} ({iree_reason(error)[:200]})")


def _host(result: Any) -> Any:
    # A copy: on the CPU, IREE 3.13's to_host() maps the result's buffer, which the runtime
    # reuses for the next call's result (earlier logits would silently change).
    if isinstance(result, tuple | list):
        return tuple(np.array(r.to_host(), copy=True) for r in result)
    return np.array(result.to_host(), copy=True)
