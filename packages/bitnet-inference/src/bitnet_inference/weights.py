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
The load itself copies for 0.5 s (`HUGE_BUDGET_S`), and a background thread copies the rest, still onto huge
pages, from the end of the first forward pass on (`release`, at most `START_AFTER_S` later), while the tokens
read those tensors from the map: this VM faults fresh memory in at anything from
0.2 to 3.4 s for the 1.19 GB file (host-side faults, worst right after other processes freed gigabytes; 4 KiB
pages are no cheaper then), so a load that waited for the whole copy could miss the 1.5 s time-to-first-token
target, and one that fell back to 4 KiB pages or the map for good decoded about 8% slower. `Model.forward`
re-points the transformer at each tensor as it arrives (between forward passes, never during one) and drops the
map's pages of it from the process, so resident memory ends at one copy of the weights.
"""

from __future__ import annotations

import logging
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
HUGE_BUDGET_S = 0.5  # seconds the load copies; a background thread copies the rest
START_AFTER_S = 2.0  # the background copy waits for the first forward pass (release()) at most this long
_DEFAULT = object()
_SKIPPED = object()
log = logging.getLogger("bitnet_inference.weights")


def anonymous_map(nbytes: int, advice: str) -> mmap.mmap:
    """nbytes of private anonymous memory (zero, nothing faulted in yet) with the madvise flag named `advice`
    ("MADV_HUGEPAGE", "MADV_NOHUGEPAGE") where the kernel offers it; OSError/ValueError when it cannot be mapped."""
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(m, "madvise") and hasattr(mmap, advice):
        try:
            m.madvise(getattr(mmap, advice))
        except OSError:
            pass  # THP off in this kernel: the pages are 4 KiB either way
    return m


def huge_page_buffer(nbytes: int) -> tuple[np.ndarray, mmap.mmap]:
    """nbytes of private anonymous memory advised MADV_HUGEPAGE, starting on a huge-page boundary: the uint8 array
    and the map that owns it (keep both alive). Nothing is faulted in yet."""
    if not hasattr(mmap, "MAP_ANONYMOUS"):
        raise EngineError("resident weights need anonymous memory maps (Linux, macOS); use --mmap here")
    try:
        m = anonymous_map(nbytes + HUGE, "MADV_HUGEPAGE")  # 4 KiB anonymous pages would still beat the page cache
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot allocate {nbytes / 1e9:.2f} GB for the model's weights ({e}); "
                          "free memory, or run with --mmap to use them in place from the file") from None
    base = np.frombuffer(m, dtype=np.uint8)
    skip = (-base.ctypes.data) % HUGE
    return base[skip : skip + nbytes], m


class ResidentWeights:
    """A GGUFFile whose large tensors are served from one anonymous huge-page arena; everything else (metadata,
    small tensors, dequantize) is the file's.

    The copy runs in two phases. At load, worker threads copy pieces for `huge_budget_s`; whatever is left is
    served from the memory map for now and copied by one background thread, still onto huge pages. A tensor is
    served from the arena once all of its bytes are there; `take_new()` hands the names that arrived since the
    last call to the owner, which re-points its arrays at them between forward passes (`Model` does this), and
    `unmap` then drops the map's pages of those tensors from this process."""

    def __init__(self, gguf, min_bytes: int | None = None, huge_budget_s: float | None | object = _DEFAULT,
                 background: bool = True):
        """huge_budget_s: seconds the load may spend copying (None: copy everything before returning); the
        default is the module's HUGE_BUDGET_S. min_bytes: smaller tensors stay in the map (default BIG).
        background: copy the rest in a background thread (False: serve it from the map for good)."""
        t0 = time.perf_counter()
        if huge_budget_s is _DEFAULT:
            huge_budget_s = HUGE_BUDGET_S
        if min_bytes is None:
            min_bytes = BIG
        self._gguf = gguf
        self.load_seconds = 0.0
        self.background_seconds: float | None = None  # load start to the last byte copied (None: not yet)
        self.error: str | None = None  # why the background copy stopped, if it did
        self.done = threading.Event()  # set once every large tensor is served from the arena (or on error)
        self._go = threading.Event()  # the background copy starts when this is set (release) or START_AFTER_S passed
        infos = [i for i in gguf.tensors.values() if i.qtype.name in RESIDENT_TYPES and i.nbytes >= min_bytes]
        offsets, total = {}, 0
        for info in infos:
            offsets[info.name] = total
            total += -(-info.nbytes // 4096) * 4096  # each tensor page-aligned
        self._offsets = offsets
        self.resident_bytes = total
        self._lock = threading.Lock()
        self._resident: set[str] = set()  # tensors whose bytes are all in the arena (prefix = nbytes)
        self._new: list[str] = []  # made resident (or, for a large tensor, a longer prefix) since the last take
        self._pieces_done: dict[str, set[int]] = {info.name: set() for info in infos}
        self._prefix = {info.name: 0 for info in infos}  # bytes from the tensor's start that are all copied
        if not infos:
            self._arena = None
            self.done.set()
            return
        self._arena, self._map = huge_page_buffer(total)
        workers = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
        # pieces of at most 32 MiB, one thread per core: much of the load is the kernel faulting in fresh pages
        # smallest tensors first: at the deadline at most a piece or two of the layer matrices is half-copied, and
        # the one large tensor (the embedding / F16 head) is the one left to the background thread, so the pages
        # held twice at the first token (arena + map) stay few
        pieces = [(info, start, min(info.nbytes, start + PIECE)) for info in sorted(infos, key=lambda i: i.nbytes)
                  for start in range(0, info.nbytes, PIECE)]
        deadline = None if huge_budget_s is None else t0 + huge_budget_s
        with ThreadPoolExecutor(min(len(pieces), workers)) as pool:
            results = list(pool.map(lambda p: self._copy(p, deadline, False), pieces))
        errors = [r for r in results if r not in (None, _SKIPPED)]
        if errors:
            raise EngineError(errors[0])
        rest = [p for p, r in zip(pieces, results) if r is _SKIPPED]
        self.load_seconds = time.perf_counter() - t0
        if not rest:
            self.background_seconds = self.load_seconds
            self.done.set()
        elif background:
            threading.Thread(target=self._copy_rest, args=(rest, t0), name="bitnet-weights", daemon=True).start()

    def _copy(self, piece, deadline, late: bool):
        """Copy one piece into the arena; _SKIPPED past the deadline, an error message, or None."""
        info, start, end = piece
        if deadline is not None and time.perf_counter() > deadline:
            return _SKIPPED
        off = self._offsets[info.name]
        dst = memoryview(self._arena[off + start : off + end])
        with open(self._gguf.path, "rb", buffering=0) as fh:
            fh.seek(info.offset + start)
            got = 0
            while got < end - start:
                n = fh.readinto(dst[got:])
                if not n:
                    return (f"{self._gguf.path}: tensor {info.name!r} ends past the end of the file; the file is "
                            "truncated: download or convert it again")
                got += n
        if late and hasattr(self._gguf, "unmap_pages"):
            # the map's pages of this piece may be mapped by the forward passes meanwhile: drop them now (a read
            # before the owner switches to the arena faults them back in, with the same bytes)
            self._gguf.unmap_pages(info.name, start, end)
        with self._lock:
            name = info.name
            done = self._pieces_done[name]
            done.add(start)
            before = self._prefix[name]
            while self._prefix[name] in done:
                self._prefix[name] = min(info.nbytes, self._prefix[name] + PIECE)
            if self._prefix[name] == info.nbytes:
                self._resident.add(name)
            if late and self._prefix[name] != before and name not in self._new:
                self._new.append(name)
        return None

    def _copy_rest(self, pieces, t0: float) -> None:
        # Not during the first token: the first forward pass reads the tensors not copied yet from the map, and
        # the copy's reads and page faults would compete with it for the disk (cold page cache) and the cores.
        self._go.wait(START_AFTER_S)
        try:
            for p in pieces:
                err = self._copy(p, None, True)
                if err:
                    self.error = err
                    log.warning("weights: background copy stopped (%s); the rest stays in the memory map", err)
                    return
            self.background_seconds = time.perf_counter() - t0
        except OSError as e:  # the file vanished or became unreadable: keep serving from the map
            self.error = str(e)
            log.warning("weights: background copy stopped (%s); the rest stays in the memory map", e)
        finally:
            self.done.set()

    # -- the owner's side ----------------------------------------------------------------------------------

    def take_new(self) -> list[str]:
        """Names of the tensors the background copy finished since the last call (cheap when there are none)."""
        if not self._new:
            return []
        with self._lock:
            new, self._new = self._new, []
        return new

    def release(self) -> None:
        """Let the background copy start now (the owner calls this once its first forward pass is done)."""
        self._go.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background copy is over; True when every large tensor is in the arena."""
        self._go.set()
        self.done.wait(timeout)
        return self.done.is_set() and self.error is None

    @property
    def resident_fraction(self) -> float:
        """Share of the large tensors' bytes served from the arena now."""
        if not self._offsets:
            return 1.0
        with self._lock:
            have = sum(self._gguf.info(n).nbytes for n in self._resident)
        return have / sum(self._gguf.info(n).nbytes for n in self._offsets)

    def unmap(self, names) -> None:
        """Drop the memory map's pages of these tensors' copied bytes from this process (GGUFFile.unmap_pages): the
        owner reads them from the arena now."""
        unmap = getattr(self._gguf, "unmap_pages", None)
        if unmap is not None:
            for name in names:
                n = self._prefix.get(name, 0)
                if n:
                    unmap(name, 0, n)

    def row_parts(self, name: str) -> list[tuple[int, np.ndarray]]:
        """A 2-D F16/F32 tensor as (first row, rows) parts: the rows already copied from the arena, the rest from the
        map. The LM head reads the embedding this way while the background copy is still on it (a logit depends on
        its row alone, so the parts give the same bits as the whole); one part once it is resident."""
        info = self._gguf.info(name)
        if name in self._resident or name not in self._offsets or len(info.shape) != 2:
            return [(0, self.array(name))]
        rows = self._prefix[name] // (info.nbytes // info.shape[0])
        if rows == 0:
            return [(0, self._gguf.array(name))]
        dt = info.qtype.numpy_dtype
        off = self._offsets[name]
        head = self._arena[off : off + rows * (info.nbytes // info.shape[0])].view(dt).reshape(rows, info.shape[1])
        head.flags.writeable = False
        return [(0, head), (rows, self._gguf.array(name)[rows:])]

    # -- the GGUFFile interface ----------------------------------------------------------------------------

    def __getattr__(self, name):
        return getattr(self._gguf, name)

    def raw(self, name: str) -> np.ndarray:
        if name not in self._resident:
            return self._gguf.raw(name)
        off = self._offsets[name]
        view = self._arena[off : off + self._gguf.info(name).nbytes]
        view.flags.writeable = False
        return view

    def array(self, name: str) -> np.ndarray:
        if name not in self._resident:
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
    mmap otherwise (the numpy and emulation paths gain nothing from it); the load copies for HUGE_BUDGET_S and
    a background thread copies the rest. resident = everything copied before the load returns."""
    if mode not in WEIGHT_MODES:
        raise EngineError(f"unknown weights placement {mode!r}; choose one of: {', '.join(WEIGHT_MODES)}")
    if mode == "mmap" or (mode == "auto" and not (fast_kernels and sys.platform.startswith("linux"))):
        return gguf
    return ResidentWeights(gguf, huge_budget_s=None if mode == "resident" else _DEFAULT)
