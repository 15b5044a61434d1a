"""Where the weights live while the CPU engine runs: in place in the memory map, or resident in anonymous memory
on transparent huge pages.

Decode reads every weight once per token, so it runs at the speed memory delivers the weights. Measured on the
2-vCPU Zen 4 machine of docs/benchmarks.md, the 210 I2_S matrices of the 2B-4T layout streamed at 23.3 GB/s
from the file's page cache (4 KiB pages, scattered), 27.3 GB/s from anonymous 4 KiB pages and 30.1 GB/s from
anonymous 2 MiB pages, one thread, same run (34.4 vs 30.2 GB/s at two threads). So by default the fast path
reads the large tensors (ternary matrices, F16 embedding / LM head) once at load, with plain `read` calls
into one private anonymous mapping advised MADV_HUGEPAGE: the load costs one copy of those bytes (about
0.3 s for the 1.19 GB file when it is in the page cache), resident memory stays about the file size (the
copy is read with `read`, not through the map, so the file's pages are not mapped into this process), and
the page cache keeps no claim on the weights the engine uses. `weights="mmap"` (CLI `--mmap`) keeps the
old behaviour: tensors used in place from the map, the fastest load and pages shared between processes.
Huge pages get 0.5 s of the copy: on this VM fresh huge pages were sometimes slow to fault in (2-3.4 s for the
same copy right after other processes had freed gigabytes, where 4 KiB pages stayed fast), so after that the
rest of the arena is faulted in as 4 KiB pages (`small_pages_from` says where).
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bitnet_inference.errors import EngineError

HUGE = 2 << 20  # transparent huge page size on x86-64
BIG = 1 << 20  # tensors at least this large are made resident
PIECE = 32 << 20  # bytes one read call fills
RESIDENT_TYPES = ("I2_S", "TQ1_0", "TQ2_0", "F16", "F32")
WEIGHT_MODES = ("auto", "resident", "mmap")
HUGE_BUDGET_S = 0.5  # after this long copying, the rest of the arena is faulted in as 4 KiB pages


def huge_page_buffer(nbytes: int) -> tuple[np.ndarray, mmap.mmap]:
    """nbytes of private anonymous memory advised MADV_HUGEPAGE, starting on a huge-page boundary: the uint8 array
    and the map that owns it (keep both alive). Nothing is faulted in yet."""
    if not hasattr(mmap, "MAP_ANONYMOUS"):
        raise EngineError("resident weights need anonymous memory maps (Linux, macOS); use --mmap here")
    try:
        m = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot allocate {nbytes / 1e9:.2f} GB for the model's weights ({e}); "
                          "free memory, or run with --mmap to use them in place from the file") from None
    if hasattr(m, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # THP off in this kernel: 4 KiB anonymous pages still beat the page cache
    base = np.frombuffer(m, dtype=np.uint8)
    skip = (-base.ctypes.data) % HUGE
    return base[skip : skip + nbytes], m


class ResidentWeights:
    """A GGUFFile whose large tensors are served from one anonymous huge-page arena; everything else (metadata,
    small tensors, dequantize) is the file's."""

    def __init__(self, gguf, min_bytes: int = BIG, huge_budget_s: float | None = HUGE_BUDGET_S):
        """huge_budget_s: seconds of copying onto huge pages, after which the rest of the arena uses 4 KiB pages
        (None: huge pages whatever they cost)."""
        t0 = time.perf_counter()
        self._gguf = gguf
        self.load_seconds = 0.0
        infos = [i for i in gguf.tensors.values() if i.qtype.name in RESIDENT_TYPES and i.nbytes >= min_bytes]
        offsets, total = {}, 0
        for info in infos:
            offsets[info.name] = total
            total += -(-info.nbytes // 4096) * 4096  # each tensor page-aligned
        self._offsets = offsets
        self.resident_bytes = total
        if not infos:
            self._arena = None
            return
        self._arena, self._map = huge_page_buffer(total)
        workers = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
        # pieces of at most 32 MiB read by one thread per core: most of the load is the kernel faulting in and
        # zeroing the fresh huge pages (0.78 s of 1.1 s for 1.18 GB on one core here), which parallelizes
        pieces = [(info, start, min(info.nbytes, start + PIECE)) for info in infos
                  for start in range(0, info.nbytes, PIECE)]
        workers = min(len(pieces), workers)
        # Fresh huge pages are not always cheap: right after other processes had freed gigabytes, this VM faulted
        # them in at 0.3-0.5 GB/s (1.9-3.4 s for 1 GiB, where 4 KiB pages took 0.45 s and huge pages 0.2-0.3 s
        # otherwise), and a small probe did not predict it (its pages came fast). So past a deadline the rest of
        # the arena is faulted in as 4 KiB pages: a bounded load, most of the huge-page gain kept.
        self._deadline = None if huge_budget_s is None else t0 + huge_budget_s
        self._small = threading.Lock()
        self.small_pages_from = None  # arena offset from which pages are 4 KiB (None: huge pages throughout)
        with ThreadPoolExecutor(workers) as pool:
            errors = [e for e in pool.map(self._read_piece, pieces) if e]
        if errors:
            raise EngineError(errors[0])
        self._arena.flags.writeable = False
        self.load_seconds = time.perf_counter() - t0

    def _read_piece(self, piece) -> str | None:
        info, start, end = piece
        off = self._offsets[info.name]
        if self._deadline is not None and self.small_pages_from is None and time.perf_counter() > self._deadline:
            with self._small:
                if self.small_pages_from is None and hasattr(mmap, "MADV_NOHUGEPAGE"):
                    try:
                        self._map.madvise(mmap.MADV_NOHUGEPAGE)  # pages already in stay huge
                        self.small_pages_from = off + start
                    except OSError:
                        pass
        dst = memoryview(self._arena[off + start : off + end])
        with open(self._gguf.path, "rb", buffering=0) as fh:
            fh.seek(info.offset + start)
            done = 0
            while done < end - start:
                n = fh.readinto(dst[done:])
                if not n:
                    return (f"{self._gguf.path}: tensor {info.name!r} ends past the end of the file; the file is "
                            "truncated: download or convert it again")
                done += n
        return None

    def __getattr__(self, name):
        return getattr(self._gguf, name)

    def raw(self, name: str) -> np.ndarray:
        off = self._offsets.get(name)
        if off is None:
            return self._gguf.raw(name)
        return self._arena[off : off + self._gguf.info(name).nbytes]

    def array(self, name: str) -> np.ndarray:
        if name not in self._offsets:
            return self._gguf.array(name)
        info = self._gguf.info(name)
        dt = info.qtype.numpy_dtype
        if dt is None:
            return self.raw(name)
        return self.raw(name).view(dt).reshape(info.shape)

    def dequantize(self, name: str) -> np.ndarray:
        info = self._gguf.info(name)
        return info.qtype.decode(self.raw(name), info.n_elements).reshape(info.shape)


def place_weights(gguf, mode: str, fast_kernels: bool):
    """The object the transformer reads its tensors from: `gguf` itself (mmap) or a ResidentWeights over it.
    auto = resident when the Cython kernels run the fast numerics on Linux (where decode speed is the point),
    mmap otherwise (the numpy and emulation paths gain nothing from it)."""
    if mode not in WEIGHT_MODES:
        raise EngineError(f"unknown weights placement {mode!r}; choose one of: {', '.join(WEIGHT_MODES)}")
    if mode == "mmap" or (mode == "auto" and not (fast_kernels and sys.platform.startswith("linux"))):
        return gguf
    return ResidentWeights(gguf)
