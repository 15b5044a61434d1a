"""The CUDA runtime of the GPU backend: pycuda context, the kernel module (compiled at first use and cached),
CUDA graph capture and launches with thread-block cluster dimensions through the driver API (pycuda wraps neither
and exposes no CUfunction handles: libcuda is called with ctypes on pycuda's stream handle and on a second load
of the same cubin).
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
        try:
            self.cubin = nvcc_compile(SOURCE.read_text(), no_extern_c=True, arch=self.arch,
                                      options=["-O3", "--std=c++17"], cache_dir=cache_dir)
        except Exception as e:
            raise GPUError(f"compiling {SOURCE.name} for {self.arch} failed: {e}") from None
        self.module = cuda.module_from_buffer(self.cubin)
        self.stream = cuda.Stream()
        self._fn = {}
        self._cumod = None  # the cubin loaded again through ctypes (launch_cluster)
        self._cufn: dict[str, ctypes.c_void_p] = {}
        self._cuattr: dict[tuple[str, int], int] = {}
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
            self._cufn[name] = h
        return h

    def _cu_attr(self, name: str, attr: int, value: int) -> None:
        if self._cuattr.get((name, attr)) != value:
            _check(_libcuda().cuFuncSetAttribute(self._cu_function(name), ctypes.c_int(attr), ctypes.c_int(value)),
                   f"cuFuncSetAttribute({name}, {attr})")
            self._cuattr[(name, attr)] = value

    def _cluster_config(self, name: str, grid, block, cluster: int, shared: int) -> tuple:
        """The CUlaunchConfig of a launch in clusters of `cluster` blocks along x (the function's dynamic shared
        memory limit raised to `shared`, and sizes over 8 allowed); returns (config, attribute) to keep alive."""
        if shared > self._cuattr.get((name, _FUNC_MAX_DYNAMIC_SHARED), 48 * 1024):
            self._cu_attr(name, _FUNC_MAX_DYNAMIC_SHARED, shared)
        if cluster > 8:
            self._cu_attr(name, _FUNC_NON_PORTABLE_CLUSTER, 1)
        attr = _LaunchAttr()
        attr.id = _LAUNCH_CLUSTER_DIM
        ctypes.memmove(ctypes.addressof(attr) + _LaunchAttr.value.offset,
                       (ctypes.c_uint * 3)(cluster, 1, 1), 12)
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))
        cfg = _LaunchConfig(*g, *b, shared, ctypes.c_void_p(self.stream.handle), ctypes.pointer(attr), 1)
        return cfg, attr

    def max_active_clusters(self, name: str, grid, block, cluster: int, shared: int) -> int:
        """How many clusters of `cluster` blocks of this launch the device can run at once (0: none fits)."""
        cfg, _attr = self._cluster_config(name, grid, block, cluster, shared)
        n = ctypes.c_int(0)
        rc = _libcuda().cuOccupancyMaxActiveClusters(ctypes.byref(n), self._cu_function(name), ctypes.byref(cfg))
        return n.value if rc == 0 else 0

    def launch_cluster(self, name: str, sig: str, grid, block, args, cluster: int, shared: int = 0) -> None:
        """Queue kernel `name` in thread-block clusters of `cluster` blocks along x (cuLaunchKernelEx), the
        arguments packed as pycuda packs them for a prepared call with signature `sig`."""
        from pycuda._pvt_struct import pack

        cfg, _attr = self._cluster_config(name, grid, block, cluster, shared)
        buf = pack(self.fn(name, sig).arg_format, *args)
        cbuf = ctypes.create_string_buffer(buf, len(buf))
        size = ctypes.c_size_t(len(buf))
        # CU_LAUNCH_PARAM_BUFFER_POINTER, the buffer, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END
        extra = (ctypes.c_void_p * 5)(1, ctypes.addressof(cbuf), 2, ctypes.addressof(size), 0)
        _check(_libcuda().cuLaunchKernelEx(ctypes.byref(cfg), self._cu_function(name), None, extra),
               f"cuLaunchKernelEx({name}, cluster {cluster})")

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


_FUNC_MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_FUNC_NON_PORTABLE_CLUSTER = 14  # CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED
_LAUNCH_CLUSTER_DIM = 4  # CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION


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
