"""DeviceStrategy -> resolve_device: the GPU is probed only when asked, and bad combinations fail early."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from bitnet_models.device import (
    DeviceError,
    DeviceStrategy,
    GpuInfo,
    GpuUnavailable,
    default_cpu_threads,
    probe_cuda,
    resolve_device,
)
from bitnet_models.discovery import ResolvedModel
from bitnet_models.settings import Settings

pytestmark = pytest.mark.fast

H100 = GpuInfo(0, "NVIDIA H100", 81000)
MOCK = ResolvedModel(Path("/c/mock/bitnet-mock-v1.gguf"), "mock", True, None, None)
REAL = ResolvedModel(Path("/m/real.gguf"), "argument", False, None, None)


def no_gpu():
    raise GpuUnavailable("pycuda found no CUDA device", extra_missing=False)


def no_pycuda():
    raise GpuUnavailable("pycuda is not installed", extra_missing=True)


def never():
    raise AssertionError("the GPU must not be probed")


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def test_cpu_never_probes_and_takes_threads():
    d = resolve_device(settings(BITNET_DEVICE="cpu", BITNET_CPU_THREADS="3"), REAL, probe=never)
    assert (d.kind, d.requested, d.cpu_threads, d.gpu) == ("cpu", DeviceStrategy.CPU, 3, None)


def test_auto_without_gpu_is_cpu_with_one_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="bitnet_models.device"):
        d = resolve_device(settings(), REAL, probe=no_pycuda)
    assert (d.kind, d.cpu_threads) == ("cpu", default_cpu_threads())
    lines = [r.getMessage() for r in caplog.records if r.name == "bitnet_models.device"]
    assert len(lines) == 1 and "running on the CPU" in lines[0] and "pycuda is not installed" in lines[0]


def test_auto_with_gpu_uses_it():
    d = resolve_device(settings(BITNET_GPU_MEMORY_LIMIT="4096"), REAL, probe=lambda: H100)
    assert (d.kind, d.gpu, d.gpu_memory_limit_mb) == ("gpu", H100, 4096)


def test_gpu_without_the_extra_names_the_combination(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)  # as if the gpu extra were not installed
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(DeviceError, match=r"^BITNET_DEVICE=gpu but the gpu extra is not installed .*bitnet\[gpu\]"):
        resolve_device(settings(BITNET_DEVICE="gpu"), REAL)


def test_real_probe_reports_missing_pycuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(GpuUnavailable) as e:
        probe_cuda()
    assert e.value.extra_missing


@pytest.mark.parametrize("device", ["gpu", "hybrid"])
def test_gpu_or_hybrid_without_device_fails(device):
    with pytest.raises(DeviceError, match=f"^BITNET_DEVICE={device} but there is no usable GPU"):
        resolve_device(settings(BITNET_DEVICE=device), REAL, probe=no_gpu)


def test_hybrid_with_gpu():
    d = resolve_device(settings(BITNET_DEVICE="hybrid", BITNET_CPU_THREADS="2"), REAL, probe=lambda: H100)
    assert (d.kind, d.cpu_threads, d.gpu) == ("hybrid", 2, H100)


def test_memory_limit_above_the_card_fails():
    with pytest.raises(DeviceError, match="BITNET_GPU_MEMORY_LIMIT=90000 MB is more than NVIDIA H100 has"):
        resolve_device(settings(BITNET_DEVICE="gpu", BITNET_GPU_MEMORY_LIMIT="90000"), REAL, probe=lambda: H100)


@pytest.mark.parametrize("device", ["auto", "cpu", "gpu", "hybrid"])
def test_strict_mode_with_mock_model_fails_naming_the_combination(device):
    s = settings(BITNET_DEVICE=device, BITNET_STRICT_NO_FAKE_GPU="1")
    with pytest.raises(DeviceError, match=r"^BITNET_STRICT_NO_FAKE_GPU=1 with the mock model"):
        resolve_device(s, MOCK, probe=lambda: H100)
    assert resolve_device(s, REAL, probe=lambda: H100).kind in ("cpu", "gpu", "hybrid")


def test_mock_model_is_fine_without_strict_mode():
    assert resolve_device(settings(BITNET_DEVICE="cpu"), MOCK, probe=never).kind == "cpu"
