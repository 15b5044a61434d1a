"""Where the forward pass runs (ADR 0001, part 5): DeviceStrategy -> resolve_device(settings) -> DeviceChoice.

pycuda is imported only when a GPU is asked for or `auto` probes for one, so a CPU-only install never needs it.
Incompatible combinations fail here, before any model is loaded, with a message naming the combination.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from bitnet_models.errors import BitNetModelError

if TYPE_CHECKING:
    from bitnet_models.discovery import ResolvedModel
    from bitnet_models.settings import Settings

log = logging.getLogger(__name__)


class DeviceStrategy(str, enum.Enum):
    AUTO = "auto"  # the GPU if pycuda and a CUDA device are there, else the CPU (one log line says so)
    CPU = "cpu"  # CPU only; the GPU is never probed
    GPU = "gpu"  # the whole model on the GPU; an error if there is none
    HYBRID = "hybrid"  # layer matmuls on the GPU, the rest on the CPU; an error if there is no GPU


class DeviceError(BitNetModelError):
    """The device asked for cannot be used in this setup."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_memory_mb: int


@dataclass(frozen=True)
class DeviceChoice:
    kind: str  # "cpu", "gpu" or "hybrid": what the engine runs on
    requested: DeviceStrategy
    cpu_threads: int
    gpu: GpuInfo | None  # the CUDA device used (None on cpu)
    gpu_memory_limit_mb: int | None  # cap on what the engine may allocate on the GPU (None: no cap)
    reason: str  # one line: why this device


class GpuUnavailable(Exception):
    """Raised by a GPU probe: `extra_missing` tells "pycuda not installed" from "no usable device"."""

    def __init__(self, detail: str, extra_missing: bool):
        super().__init__(detail)
        self.extra_missing = extra_missing


def probe_cuda() -> GpuInfo:
    """The first CUDA device through pycuda, or GpuUnavailable."""
    try:
        import pycuda.driver as cuda  # noqa: PLC0415 (lazy on purpose: the gpu extra is optional)
    except ImportError as e:
        raise GpuUnavailable(f"pycuda is not installed ({e})", extra_missing=True) from None
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            raise GpuUnavailable("pycuda found no CUDA device", extra_missing=False)
        dev = cuda.Device(0)
        return GpuInfo(0, dev.name(), dev.total_memory() // (1 << 20))
    except GpuUnavailable:
        raise
    except Exception as e:  # pycuda raises its own error types for a missing driver or device
        raise GpuUnavailable(f"CUDA is not usable: {e}", extra_missing=False) from None


def default_cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_device(
    settings: "Settings",
    model: "ResolvedModel | None" = None,
    *,
    probe: Callable[[], GpuInfo] = probe_cuda,
) -> DeviceChoice:
    """Turn BITNET_DEVICE (and the model about to run) into a device, or fail naming the combination."""
    req = settings.device
    threads = settings.cpu_threads or default_cpu_threads()
    limit = settings.gpu_memory_limit_mb
    if settings.strict_no_fake_gpu and model is not None and model.is_mock:
        raise DeviceError(
            f"BITNET_STRICT_NO_FAKE_GPU=1 with the mock model {model.path}: strict mode runs real models only; "
            "give a real model (-m, BITNET_GGUF or `bitnet download NAME`) or unset BITNET_STRICT_NO_FAKE_GPU"
        )
    if req is DeviceStrategy.CPU:
        return DeviceChoice("cpu", req, threads, None, None, "BITNET_DEVICE=cpu")
    try:
        gpu = probe()
    except GpuUnavailable as e:
        if req is DeviceStrategy.AUTO:
            log.info("no usable GPU (%s): running on the CPU with %d threads", e, threads)
            return DeviceChoice("cpu", req, threads, None, None, f"auto: no usable GPU ({e})")
        if e.extra_missing:
            raise DeviceError(
                f"BITNET_DEVICE={req.value} but the gpu extra is not installed ({e}): "
                "pip install 'bitnet[gpu]', or use BITNET_DEVICE=cpu (or auto)"
            ) from None
        raise DeviceError(
            f"BITNET_DEVICE={req.value} but there is no usable GPU ({e}): use BITNET_DEVICE=cpu (or auto), "
            "or run where nvidia-smi shows a device"
        ) from None
    if limit is not None and limit > gpu.total_memory_mb:
        raise DeviceError(
            f"BITNET_GPU_MEMORY_LIMIT={limit} MB is more than {gpu.name} has ({gpu.total_memory_mb} MB): "
            f"lower it or unset it"
        )
    kind = "hybrid" if req is DeviceStrategy.HYBRID else "gpu"
    return DeviceChoice(kind, req, threads, gpu, limit, f"{req.value}: {gpu.name} ({gpu.total_memory_mb} MB)")
