"""The CUDA runtime of the GPU backend: pycuda context, the kernel module (compiled at first use and cached),
CUDA graph capture through the driver API (pycuda has no graph wrapper; libcuda is called with ctypes on
pycuda's stream handle), and programmatic dependent launches (cuLaunchKernelEx through ctypes on a second load of
the same cubin: pycuda exposes no CUfunction handles).
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
        from pycuda.compiler import compile as nvcc_compile

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
        # BITNET_GPU_TRACE=1: the kernels' stage timestamps compiled in (tools/gpu_profile_step.py; their code costs
        # the decode step instruction fetches even where no trace buffer is given, so it is left out otherwise)
        self.traced = os.environ.get("BITNET_GPU_TRACE", "0") == "1"
        options = ["-O3", "--std=c++17"] + (["-DBITNET_TRACE"] if self.traced else [])
        try:
            self.cubin = nvcc_compile(SOURCE.read_text(), no_extern_c=True, arch=self.arch, options=options,
                                      cache_dir=cache_dir)
        except Exception as e:
            raise GPUError(f"compiling {SOURCE.name} for {self.arch} failed: {e}") from None
        self.module = cuda.module_from_buffer(self.cubin)
        self.stream = cuda.Stream()
        self._fn = {}
        self._cumod = None  # the cubin loaded again through ctypes (launch_pdl)
        self._cufn: dict[str, ctypes.c_void_p] = {}
        self._cusmem: dict[str, int] = {}
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

    def launch(self, name: str, sig: str, grid, block, *args, shared: int = 0, pdl: bool = False):
        """Queue kernel `name` (pycuda prepared-call signature `sig`); pdl: as a programmatic dependent of the
        kernel before it (the kernel runs griddepcontrol.wait before it reads what that kernel wrote)."""
        if pdl:
            self.launch_pdl(name, sig, grid, block, args, shared)
            return
        self.fn(name, sig).prepared_async_call(grid, block, self.stream, *args, shared_size=shared)

    def _cu_function(self, name: str) -> ctypes.c_void_p:
        h = self._cufn.get(name)
        if h is None:
            lib = _libcuda()
            if self._cumod is None:
                mod = ctypes.c_void_p()
                _check(lib.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(self.cubin)), "cuModuleLoadData")
                self._cumod = mod
            h = ctypes.c_void_p()
            _check(lib.cuModuleGetFunction(ctypes.byref(h), self._cumod, name.encode()), "cuModuleGetFunction")
            # CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: all of the unified memory as shared memory, so
            # that every dependent kernel runs in the same carveout (an SM changes its carveout only when idle,
            # which would keep the next kernel's blocks from becoming resident beside the running ones)
            _check(lib.cuFuncSetAttribute(h, ctypes.c_int(9), ctypes.c_int(100)), "cuFuncSetAttribute")
            self._cufn[name] = h
        return h

    def launch_pdl(self, name: str, sig: str, grid, block, args, shared: int = 0) -> None:
        """cuLaunchKernelEx with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: the kernel may start once
        the previous kernel's blocks have all run griddepcontrol.launch_dependents (or exited); the arguments
        packed as pycuda packs them for a prepared call."""
        from pycuda._pvt_struct import pack

        lib = _libcuda()
        h = self._cu_function(name)
        if shared > self._cusmem.get(name, 0):  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            _check(lib.cuFuncSetAttribute(h, ctypes.c_int(8), ctypes.c_int(shared)), "cuFuncSetAttribute")
            self._cusmem[name] = shared
        buf = pack(self.fn(name, sig).arg_format, *args)
        cbuf = ctypes.create_string_buffer(buf, len(buf))
        size = ctypes.c_size_t(len(buf))
        # CU_LAUNCH_PARAM_BUFFER_POINTER, the buffer, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END
        extra = (ctypes.c_void_p * 5)(1, ctypes.addressof(cbuf), 2, ctypes.addressof(size), 0)
        attr = _LaunchAttr()
        attr.id = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        ctypes.memmove(ctypes.addressof(attr) + _LaunchAttr.value.offset, ctypes.byref(ctypes.c_int(1)), 4)
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))
        cfg = _LaunchConfig(*g, *b, shared, ctypes.c_void_p(self.stream.handle), ctypes.pointer(attr), 1)
        _check(lib.cuLaunchKernelEx(ctypes.byref(cfg), h, None, extra), f"cuLaunchKernelEx({name})")

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


class _LaunchAttr(ctypes.Structure):  # CUlaunchAttribute: the id, 4 bytes of padding, a 64-byte union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_char * 64)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_LaunchAttr)), ("numAttrs", ctypes.c_uint)]


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
