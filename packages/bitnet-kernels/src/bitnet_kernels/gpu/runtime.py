"""The CUDA runtime of the GPU backend: pycuda context, the kernel module (compiled at first use and cached),
and CUDA graph capture through the driver API (pycuda has no graph wrapper; libcuda is called with ctypes on
pycuda's stream handle).
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

from bitnet_kernels.gpu.errors import GPUError, GPUUnavailableError

SOURCE = Path(__file__).with_name("kernels.cu")


def gpu_status() -> tuple[bool, str]:
    """(True, device name) when pycuda imports and a CUDA device answers; else (False, what is missing)."""
    try:  # a pycuda built against a stub libcuda finds the driver's symbols in the global namespace
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        pass
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        return False, f"pycuda is not installed ({e}); install the `gpu` extra: pip install 'bitnet-kernels[gpu]'"
    try:
        cuda.init()
        n = cuda.Device.count()
    except Exception as e:  # pycuda raises its own LogicError / RuntimeError when there is no driver
        return False, f"no CUDA driver or device ({type(e).__name__}: {e})"
    if n == 0:
        return False, "no CUDA device found"
    return True, cuda.Device(0).name()


class Runtime:
    """One CUDA context on device 0 (the primary context), the compiled module and one stream."""

    def __init__(self, device: int = 0):
        ok, why = gpu_status()
        if not ok:
            raise GPUUnavailableError(f"the GPU backend is unavailable: {why}")
        import pycuda.driver as cuda
        from pycuda.compiler import SourceModule

        self.cuda = cuda
        self.device = cuda.Device(device)
        self.ctx = self.device.retain_primary_context()
        self.ctx.push()
        import atexit

        atexit.register(self._close)
        self.name = self.device.name()
        major, minor = self.device.compute_capability()
        self.arch = f"sm_{major}{minor}"
        cache_dir = os.environ.get("BITNET_GPU_CACHE", str(Path.home() / ".cache" / "bitnet-py" / "cuda"))
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        try:
            self.module = SourceModule(SOURCE.read_text(), no_extern_c=True, arch=self.arch,
                                       options=["-O3", "--std=c++17"], cache_dir=cache_dir)
        except Exception as e:
            raise GPUError(f"compiling {SOURCE.name} for {self.arch} failed: {e}") from None
        self.stream = cuda.Stream()
        self._fn = {}
        self.total_mem = self.device.total_memory()

    def _close(self) -> None:
        try:
            self.stream.synchronize()
            self.ctx.pop()
        except Exception:  # the context is already gone at interpreter exit
            pass

    def fn(self, name: str, sig: str):
        f = self._fn.get(name)
        if f is None:
            f = self.module.get_function(name)
            f.prepare(sig)
            self._fn[name] = f
        return f

    def launch(self, name: str, sig: str, grid, block, *args, shared: int = 0):
        self.fn(name, sig).prepared_async_call(grid, block, self.stream, *args, shared_size=shared)

    def sync(self) -> None:
        self.stream.synchronize()


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    return Runtime()


# --- CUDA graphs through the driver API -------------------------------------------------------------------

@lru_cache(maxsize=1)
def _libcuda():
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        raise GPUUnavailableError(f"libcuda.so.1 not found ({e})") from None
    return lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise GPUError(f"{what} failed with CUresult {rc}")


class CudaGraph:
    """Capture the work queued on `stream` between begin() and end(); replay() launches it again."""

    def __init__(self, stream):
        self.stream = stream
        self.lib = _libcuda()
        self.graph = ctypes.c_void_p()
        self.exec = ctypes.c_void_p()
        self.extra: list[ctypes.c_void_p] = []

    def begin(self) -> None:
        # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1
        _check(self.lib.cuStreamBeginCapture_v2(ctypes.c_void_p(self.stream.handle), ctypes.c_int(1)),
               "cuStreamBeginCapture")

    def end(self) -> None:
        _check(self.lib.cuStreamEndCapture(ctypes.c_void_p(self.stream.handle), ctypes.byref(self.graph)),
               "cuStreamEndCapture")
        _check(self.lib.cuGraphInstantiateWithFlags(ctypes.byref(self.exec), self.graph, ctypes.c_ulonglong(0)),
               "cuGraphInstantiate")

    def add_exec(self) -> int:
        """Instantiate the captured graph once more; replay(i) launches instance i (0: the first)."""
        ex = ctypes.c_void_p()
        _check(self.lib.cuGraphInstantiateWithFlags(ctypes.byref(ex), self.graph, ctypes.c_ulonglong(0)),
               "cuGraphInstantiate")
        self.extra.append(ex)
        return len(self.extra)

    def replay(self, i: int = 0) -> None:
        ex = self.exec if i == 0 else self.extra[i - 1]
        _check(self.lib.cuGraphLaunch(ex, ctypes.c_void_p(self.stream.handle)), "cuGraphLaunch")

    def close(self) -> None:
        for ex in self.extra:
            self.lib.cuGraphExecDestroy(ex)
        self.extra = []
        if self.exec:
            self.lib.cuGraphExecDestroy(self.exec)
            self.exec = ctypes.c_void_p()
        if self.graph:
            self.lib.cuGraphDestroy(self.graph)
            self.graph = ctypes.c_void_p()
