"""Settings.from_env: every variable, its default, CLI overrides, and a typed error for each bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitnet_models.device import DeviceStrategy
from bitnet_models.errors import BitNetModelError
from bitnet_models.settings import Settings, SettingsError
from bitnet_models.strategy import ModelSelectionStrategy

pytestmark = pytest.mark.fast


def test_defaults_from_an_empty_environment():
    s = Settings.from_env({"HOME": "/home/u"})
    assert s.gguf is None and s.tokenizer is None and s.models_lock is None
    assert s.cache_dir == Path("/home/u/.cache/bitnet")
    assert s.offline is False and s.hf_token is None
    assert s.hf_endpoint == "https://huggingface.co"
    assert s.model_strategy is ModelSelectionStrategy.PREFER_REAL
    assert s.device is DeviceStrategy.AUTO
    assert s.gpu_memory_limit_mb is None and s.cpu_threads is None
    assert s.strict_no_fake_gpu is False
    assert (s.download_retries, s.download_backoff_s) == (5, 1.0)


def test_every_variable_is_read():
    s = Settings.from_env(
        {
            "BITNET_GGUF": "/m/a.gguf",
            "BITNET_TOKENIZER": "/m/tok.model",
            "BITNET_CACHE": "/c",
            "BITNET_MODELS_LOCK": "/l/models.lock",
            "BITNET_OFFLINE": "yes",
            "HF_TOKEN": "hf_x",
            "HF_ENDPOINT": "http://127.0.0.1:9/",
            "BITNET_MODEL_STRATEGY": "force_real",
            "BITNET_DEVICE": "GPU",
            "BITNET_GPU_MEMORY_LIMIT": "4096",
            "BITNET_CPU_THREADS": "3",
            "BITNET_STRICT_NO_FAKE_GPU": "1",
            "BITNET_DOWNLOAD_RETRIES": "0",
            "BITNET_DOWNLOAD_BACKOFF": "0.5",
        }
    )
    assert s.gguf == Path("/m/a.gguf") and s.tokenizer == Path("/m/tok.model")
    assert s.cache_dir == Path("/c") and s.models_lock == Path("/l/models.lock")
    assert s.offline and s.hf_token == "hf_x" and s.hf_endpoint == "http://127.0.0.1:9"
    assert s.model_strategy is ModelSelectionStrategy.FORCE_REAL and s.device is DeviceStrategy.GPU
    assert (s.gpu_memory_limit_mb, s.cpu_threads, s.strict_no_fake_gpu) == (4096, 3, True)
    assert (s.download_retries, s.download_backoff_s) == (0, 0.5)


def test_cache_dir_precedence():
    assert Settings.from_env({"XDG_CACHE_HOME": "/x", "HOME": "/h"}).cache_dir == Path("/x/bitnet")
    assert Settings.from_env({"BITNET_CACHE": "/b", "XDG_CACHE_HOME": "/x"}).cache_dir == Path("/b")
    assert Settings.from_env({"HOME": "/h", "XDG_CACHE_HOME": ""}).cache_dir == Path("/h/.cache/bitnet")


@pytest.mark.parametrize("var", ["BITNET_OFFLINE", "HF_HUB_OFFLINE"])
def test_either_offline_variable_turns_offline_on(var):
    assert Settings.from_env({var: "1"}).offline
    assert not Settings.from_env({var: "0"}).offline


def test_settings_are_frozen():
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.device = DeviceStrategy.CPU  # type: ignore[misc]


@pytest.mark.parametrize(
    "var, value, allowed",
    [
        ("BITNET_DEVICE", "tpu", "auto, cpu, gpu, hybrid"),
        ("BITNET_MODEL_STRATEGY", "environment", "prefer_real, force_real, mock_only"),
        ("BITNET_MODEL_STRATEGY", "real", "prefer_real, force_real, mock_only"),
        ("BITNET_GPU_MEMORY_LIMIT", "4G", "whole number of MB"),
        ("BITNET_GPU_MEMORY_LIMIT", "0", "at least 1"),
        ("BITNET_CPU_THREADS", "-2", "whole number of threads"),
        ("BITNET_STRICT_NO_FAKE_GPU", "maybe", "1, true, yes, on, 0, false, no, off"),
        ("BITNET_OFFLINE", "2", "1, true"),
        ("HF_ENDPOINT", "huggingface.co", "http:// or https:// URL"),
        ("BITNET_DOWNLOAD_BACKOFF", "-1", "0 or more"),
    ],
)
def test_invalid_values_name_variable_value_and_allowed(var, value, allowed):
    with pytest.raises(SettingsError) as e:
        Settings.from_env({var: value})
    msg = str(e.value)
    assert msg.startswith(f"{var}={value} is not valid; allowed: ")
    assert allowed in msg
    assert isinstance(e.value, BitNetModelError) and e.value.exit_code == 2


def test_cli_overrides_win_and_none_means_not_given():
    env = {"BITNET_DEVICE": "gpu", "BITNET_CACHE": "/env"}
    s = Settings.from_env(env, device="cpu", cache_dir=None, cpu_threads="2")
    assert s.device is DeviceStrategy.CPU and s.cache_dir == Path("/env") and s.cpu_threads == 2


def test_bad_override_names_the_flag():
    with pytest.raises(SettingsError, match=r"^--device=tpu is not valid; allowed: auto, cpu, gpu, hybrid"):
        Settings.from_env({}, device="tpu")
    with pytest.raises(SettingsError, match=r"^--threads=0 is not valid"):
        Settings.from_env({}, cpu_threads=0)


def test_unknown_override_is_a_programming_error():
    with pytest.raises(TypeError, match="no field 'devise'"):
        Settings.from_env({}, devise="cpu")
