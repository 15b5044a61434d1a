"""Which model file a run uses (ADR 0001, part 2): `resolve_model(requested, settings) -> ResolvedModel`.

Discovery order, first hit wins:
  1. "argument"     the -m value (a path, or the name of a models.lock entry already downloaded)
  2. "BITNET_GGUF"  the variable (with BITNET_TOKENIZER for an external tokenizer)
  3. "./models"     ./models/*.gguf (sorted by name)
  4. "cache"        *.gguf under the cache dir that no models.lock entry names (the mock model's folder excluded)
  5. "models.lock"  models.lock entries already downloaded into the cache (by `bitnet download NAME`)
  6. "embedded"     a default model shipped inside the package (bitnet_models/data/*.gguf)
  7. "mock"         the mock model, only where the strategy allows it (prefer_real falls back to it with a warning)
An explicit path that does not exist (-m or BITNET_GGUF) is an error, never a reason to look elsewhere.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

from bitnet_models.errors import BitNetModelError, ModelNotFoundError
from bitnet_models.lock import LockEntry, ModelsLock, load_lock
from bitnet_models.mock import MOCK_NAME, mock_model_path
from bitnet_models.settings import Settings
from bitnet_models.strategy import ModelSelectionStrategy

SOURCES = ("argument", "BITNET_GGUF", "./models", "cache", "models.lock", "embedded", "mock")
SUGGESTED_MODEL = "bitnet-b1.58-2B-4T"


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    source: str  # one of SOURCES
    is_mock: bool
    lock_entry: LockEntry | None
    tokenizer_path: Path | None  # an external tokenizer (BITNET_TOKENIZER); None: the one inside the GGUF


def embedded_data_dir() -> Path | None:
    """The package's data folder (bitnet_models/data), where a default model may be shipped; None if absent."""
    d = resources.files("bitnet_models").joinpath("data")
    return Path(str(d)) if d.is_dir() else None


def _missing(path: Path, origin: str) -> ModelNotFoundError:
    if origin == "BITNET_GGUF":
        fix = "point BITNET_GGUF at an existing .gguf file, or unset it to use discovery (see `bitnet models`)"
    else:
        fix = f"give an existing .gguf file or a models.lock name, or get one with `bitnet download {SUGGESTED_MODEL}`"
    return ModelNotFoundError(f"model file {path} (from {origin}) does not exist; {fix}")


def _tokenizer(settings: Settings) -> Path | None:
    t = settings.tokenizer
    if t is not None and not t.is_file():
        raise ModelNotFoundError(
            f"tokenizer file {t} (from BITNET_TOKENIZER) does not exist; fix the path or unset BITNET_TOKENIZER "
            "to use the tokenizer inside the GGUF"
        )
    return t


def _requested(requested: str, settings: Settings, lock: ModelsLock) -> ResolvedModel:
    p = Path(requested).expanduser()
    if p.is_file():
        return ResolvedModel(p, "argument", False, None, _tokenizer(settings))
    entry = next((e for e in lock.entries if e.name == requested), None)
    if entry is None:
        raise _missing(p, "-m")
    path = entry.cache_path(settings.cache_dir)
    if not _downloaded(entry, path):
        raise ModelNotFoundError(
            f"model {entry.name} (from -m) is not downloaded (expected {path}); "
            f"run `bitnet download {entry.name}`"
        )
    return ResolvedModel(path, "models.lock", False, entry, _tokenizer(settings))


def _downloaded(entry: LockEntry, path: Path) -> bool:
    # Size only: hashing a GB on every start is too slow. `bitnet download` verified the sha256 when it placed the
    # file, and re-verifies (and repairs) a damaged one when run again.
    try:
        return path.stat().st_size == entry.size
    except OSError:
        return False


def iter_real_models(settings: Settings, lock: ModelsLock | None = None) -> Iterator[ResolvedModel]:
    """Every real model discovery can see, in priority order (sources 2 to 6)."""
    lock = load_lock(settings) if lock is None else lock
    tok = _tokenizer(settings)
    if settings.gguf is not None:
        if not settings.gguf.is_file():
            raise _missing(settings.gguf, "BITNET_GGUF")
        yield ResolvedModel(settings.gguf, "BITNET_GGUF", False, None, tok)
    models_dir = Path("models")
    if models_dir.is_dir():
        for p in sorted(models_dir.glob("*.gguf")):
            if p.is_file():
                yield ResolvedModel(p, "./models", False, _entry_for(p, lock), tok)
    cache = settings.cache_dir
    locked = {e.cache_path(cache).resolve(): e for e in lock.entries}
    if cache.is_dir():
        for p in sorted(cache.rglob("*.gguf")):
            rel = p.relative_to(cache).parts
            if rel[0] == "mock" or p.resolve() in locked or not p.is_file():
                continue
            yield ResolvedModel(p, "cache", False, None, tok)
    for path, e in locked.items():
        if _downloaded(e, path):
            yield ResolvedModel(e.cache_path(cache), "models.lock", False, e, tok)
    data = embedded_data_dir()
    if data is not None:
        for p in sorted(data.glob("*.gguf")):
            if p.is_file():
                yield ResolvedModel(p, "embedded", False, None, tok)


def _entry_for(path: Path, lock: ModelsLock) -> LockEntry | None:
    """The lock entry a file in ./models is a copy of, judged by file name and size (no hashing)."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    return next((e for e in lock.entries if Path(e.file).name == path.name and e.size == size), None)


def fallback_warning(settings: Settings, mock: Path) -> str:
    return (
        f"WARNING: no real model found (looked at -m, BITNET_GGUF, ./models/*.gguf, {settings.cache_dir}, "
        f"models.lock downloads, the package's embedded model); using the MOCK model {mock}, whose random weights "
        f"make its output meaningless. Get a real model with `bitnet download {SUGGESTED_MODEL}`, or set "
        "BITNET_MODEL_STRATEGY=force_real to make this an error."
    )


def resolve_model(
    requested: str | None,
    settings: Settings,
    strategy: ModelSelectionStrategy = ModelSelectionStrategy.ENVIRONMENT,
    *,
    allow_mock: bool = True,
    lock: ModelsLock | None = None,
) -> ResolvedModel:
    """The model a run uses. `requested` is the -m value (None when not given); `allow_mock=False` forbids the
    prefer_real fallback for callers that must never serve random weights."""
    strategy = strategy.effective(settings.model_strategy)
    lock = load_lock(settings) if lock is None else lock
    if strategy is ModelSelectionStrategy.MOCK_ONLY:
        if requested is not None:
            raise BitNetModelError(
                f"-m {requested} asks for a real model but the model strategy is mock_only: drop -m, or set "
                "BITNET_MODEL_STRATEGY to prefer_real or force_real"
            )
        return ResolvedModel(mock_model_path(settings.cache_dir), "mock", True, None, _tokenizer(settings))
    if requested is not None:
        return _requested(requested, settings, lock)
    found = next(iter_real_models(settings, lock), None)
    if found is not None:
        return found
    if strategy is ModelSelectionStrategy.FORCE_REAL:
        raise ModelNotFoundError(_none_found(settings, lock, "BITNET_MODEL_STRATEGY=force_real"))
    if not allow_mock:
        raise ModelNotFoundError(_none_found(settings, lock, "this command never uses the mock model"))
    if settings.strict_no_fake_gpu:
        raise ModelNotFoundError(_none_found(settings, lock, "BITNET_STRICT_NO_FAKE_GPU=1 forbids the mock model"))
    mock = mock_model_path(settings.cache_dir)
    print(fallback_warning(settings, mock), file=sys.stderr, flush=True)
    return ResolvedModel(mock, "mock", True, None, _tokenizer(settings))


def _none_found(settings: Settings, lock: ModelsLock, why: str) -> str:
    name = lock.entries[0].name if lock.entries else SUGGESTED_MODEL
    return (
        f"no model found ({why}): looked at -m, BITNET_GGUF, ./models/*.gguf, {settings.cache_dir} and the "
        f"models.lock downloads; get one with `bitnet download {name}` (or pass -m PATH / set BITNET_GGUF)"
    )


@dataclass(frozen=True)
class ModelListing:
    found: tuple[ResolvedModel, ...]  # real models in discovery order (the first is what a run would use)
    missing: tuple[LockEntry, ...]  # models.lock entries not downloaded yet
    mock: Path  # where the mock model is (or would be) written
    lock_path: Path | None


def list_models(settings: Settings, lock: ModelsLock | None = None) -> ModelListing:
    lock = load_lock(settings) if lock is None else lock
    found = tuple(iter_real_models(settings, lock))
    present = {m.lock_entry.name for m in found if m.lock_entry is not None and m.source == "models.lock"}
    missing = tuple(e for e in lock.entries if e.name not in present)
    return ModelListing(found, missing, settings.cache_dir / "mock" / f"{MOCK_NAME}.gguf", lock.path)
