"""Every run-time setting, read in ONE place: the environment plus CLI overrides -> a frozen Settings.

Kernels, models and the engine take a Settings (or values from it); they never read os.environ themselves.
`docs/configuration.md` lists every variable and flag with its default; keep the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from bitnet_models.device import DeviceStrategy
from bitnet_models.errors import BitNetModelError
from bitnet_models.strategy import ENV_STRATEGIES, ModelSelectionStrategy

DEFAULT_HF_ENDPOINT = "https://huggingface.co"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(BitNetModelError, ValueError):
    """A setting has a value outside the ones allowed."""

    def __init__(self, name: str, value: object, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name}={value!s} is not valid; allowed: {allowed}")


@dataclass(frozen=True)
class Settings:
    gguf: Path | None = None  # BITNET_GGUF: the model file to use (skips discovery)
    tokenizer: Path | None = None  # BITNET_TOKENIZER: an external tokenizer file
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "bitnet")  # BITNET_CACHE, else $XDG_CACHE_HOME/bitnet, else ~/.cache/bitnet
    models_lock: Path | None = None  # BITNET_MODELS_LOCK: the models.lock to use instead of the found one
    offline: bool = False  # BITNET_OFFLINE or HF_HUB_OFFLINE: never touch the network
    hf_token: str | None = None  # HF_TOKEN: sent to the Hub (gated or private repos)
    hf_endpoint: str = DEFAULT_HF_ENDPOINT  # HF_ENDPOINT: the Hub (a mirror, or a test server)
    model_strategy: ModelSelectionStrategy = ModelSelectionStrategy.PREFER_REAL  # BITNET_MODEL_STRATEGY
    device: DeviceStrategy = DeviceStrategy.AUTO  # BITNET_DEVICE
    gpu_memory_limit_mb: int | None = None  # BITNET_GPU_MEMORY_LIMIT (MB); None: no limit
    cpu_threads: int | None = None  # BITNET_CPU_THREADS; None: every core this process may use
    strict_no_fake_gpu: bool = False  # BITNET_STRICT_NO_FAKE_GPU: nothing fake (no mock model, no GPU stand-in)
    download_retries: int = 5  # BITNET_DOWNLOAD_RETRIES: attempts after the first on 5xx / connection errors
    download_backoff_s: float = 1.0  # BITNET_DOWNLOAD_BACKOFF: first retry delay (s), doubled each retry

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **cli_overrides: Any) -> "Settings":
        """Read the environment, then apply CLI overrides (keyword = field name; None means "not given")."""
        env = {k: v for k, v in environ.items() if v != ""}  # an empty variable counts as unset
        values: dict[str, Any] = {}

        def path(var: str) -> Path | None:
            return Path(env[var]).expanduser() if var in env else None

        values["gguf"] = path("BITNET_GGUF")
        values["tokenizer"] = path("BITNET_TOKENIZER")
        values["models_lock"] = path("BITNET_MODELS_LOCK")
        values["cache_dir"] = _cache_dir(env)
        offline = [_bool(v, env[v]) for v in ("BITNET_OFFLINE", "HF_HUB_OFFLINE") if v in env]
        values["offline"] = any(offline)
        values["hf_token"] = env.get("HF_TOKEN")
        if "HF_ENDPOINT" in env:
            values["hf_endpoint"] = _endpoint("HF_ENDPOINT", env["HF_ENDPOINT"])
        if "BITNET_MODEL_STRATEGY" in env:
            values["model_strategy"] = _model_strategy("BITNET_MODEL_STRATEGY", env["BITNET_MODEL_STRATEGY"])
        if "BITNET_DEVICE" in env:
            values["device"] = _device("BITNET_DEVICE", env["BITNET_DEVICE"])
        if "BITNET_GPU_MEMORY_LIMIT" in env:
            values["gpu_memory_limit_mb"] = _int("BITNET_GPU_MEMORY_LIMIT", env["BITNET_GPU_MEMORY_LIMIT"], 1, "MB")
        if "BITNET_CPU_THREADS" in env:
            values["cpu_threads"] = _int("BITNET_CPU_THREADS", env["BITNET_CPU_THREADS"], 1, "threads")
        if "BITNET_STRICT_NO_FAKE_GPU" in env:
            values["strict_no_fake_gpu"] = _bool("BITNET_STRICT_NO_FAKE_GPU", env["BITNET_STRICT_NO_FAKE_GPU"])
        if "BITNET_DOWNLOAD_RETRIES" in env:
            values["download_retries"] = _int("BITNET_DOWNLOAD_RETRIES", env["BITNET_DOWNLOAD_RETRIES"], 0, "retries")
        if "BITNET_DOWNLOAD_BACKOFF" in env:
            values["download_backoff_s"] = _float("BITNET_DOWNLOAD_BACKOFF", env["BITNET_DOWNLOAD_BACKOFF"])

        known = {f.name for f in fields(cls)}
        for name, value in cli_overrides.items():
            if name not in known:
                raise TypeError(f"Settings has no field {name!r}; fields: {', '.join(sorted(known))}")
            if value is not None:
                values[name] = _PARSE_OVERRIDE[name](FLAGS.get(name, name), value)
        return cls(**values)


# The CLI flag that overrides each field (used to name the flag in errors; docs/configuration.md lists them).
FLAGS = {
    "tokenizer": "--tokenizer",
    "cache_dir": "--cache-dir",
    "offline": "--offline",
    "model_strategy": "--model-strategy",
    "device": "--device",
    "gpu_memory_limit_mb": "--gpu-memory-limit",
    "cpu_threads": "--threads",
}


def _cache_dir(env: Mapping[str, str]) -> Path:
    if "BITNET_CACHE" in env:
        return Path(env["BITNET_CACHE"]).expanduser()
    if "XDG_CACHE_HOME" in env:
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "bitnet"
    home = Path(env["HOME"]) if "HOME" in env else Path.home()
    return home / ".cache" / "bitnet"


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SettingsError(name, value, f"one of {', '.join(_TRUE + _FALSE)}")


def _int(name: str, value: Any, minimum: int, unit: str) -> int:
    n = None
    if not isinstance(value, bool):
        try:
            n = value if isinstance(value, int) else int(str(value).strip())
        except ValueError:
            pass
    if n is None or n < minimum:
        raise SettingsError(name, value, f"a whole number of {unit}, at least {minimum}")
    return n


def _float(name: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = -1.0
    if not (x >= 0.0 and x != float("inf")):
        raise SettingsError(name, value, "a number of seconds, 0 or more")
    return x


def _endpoint(name: str, value: Any) -> str:
    v = str(value).strip().rstrip("/")
    if not v.startswith(("http://", "https://")):
        raise SettingsError(name, value, "an http:// or https:// URL, for example https://huggingface.co")
    return v


def _model_strategy(name: str, value: Any) -> ModelSelectionStrategy:
    if isinstance(value, ModelSelectionStrategy):
        return value
    v = str(value).strip().lower().replace("-", "_")
    if v not in ENV_STRATEGIES:
        raise SettingsError(name, value, ", ".join(ENV_STRATEGIES))
    return ModelSelectionStrategy(v)


def _device(name: str, value: Any) -> DeviceStrategy:
    if isinstance(value, DeviceStrategy):
        return value
    v = str(value).strip().lower()
    try:
        return DeviceStrategy(v)
    except ValueError:
        raise SettingsError(name, value, ", ".join(d.value for d in DeviceStrategy)) from None


def _path(name: str, value: Any) -> Path:
    return Path(value).expanduser()


_PARSE_OVERRIDE = {
    "gguf": _path,
    "tokenizer": _path,
    "cache_dir": _path,
    "models_lock": _path,
    "offline": _bool,
    "hf_token": lambda n, v: str(v),
    "hf_endpoint": _endpoint,
    "model_strategy": _model_strategy,
    "device": _device,
    "gpu_memory_limit_mb": lambda n, v: _int(n, v, 1, "MB"),
    "cpu_threads": lambda n, v: _int(n, v, 1, "threads"),
    "strict_no_fake_gpu": _bool,
    "download_retries": lambda n, v: _int(n, v, 0, "retries"),
    "download_backoff_s": _float,
}
