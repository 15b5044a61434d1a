"""models.lock: the pinned real models (name, Hugging Face repo, revision, file, sha256, size, arch, quant, license).

Where the lock comes from, first found wins: BITNET_MODELS_LOCK, ./models.lock, the repository's top-level
models.lock (a source checkout or editable install), a copy shipped inside the package (bitnet_models/models.lock).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from bitnet_models.errors import BitNetModelError

if TYPE_CHECKING:
    from bitnet_models.settings import Settings

LOCK_NAME = "models.lock"
_FIELDS = ("name", "repo", "revision", "file", "sha256", "size", "arch", "quant", "license")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class LockError(BitNetModelError):
    """models.lock is missing, malformed, or has no entry by that name."""


@dataclass(frozen=True)
class LockEntry:
    name: str
    repo: str  # "owner/name" on the Hub
    revision: str  # a commit hash (or a branch: then only sha256 pins the content)
    file: str  # path of the file inside the repo
    sha256: str
    size: int
    arch: str
    quant: str
    license: str

    def cache_path(self, cache_dir: Path) -> Path:
        return download_path(cache_dir, self.repo, self.revision, self.file)


def download_path(cache_dir: Path, repo: str, revision: str, file: str) -> Path:
    """Where `bitnet download` puts a Hub file: <cache>/hub/<owner>--<name>/<revision>/<file>."""
    return Path(cache_dir) / "hub" / repo.replace("/", "--") / revision / file


@dataclass(frozen=True)
class ModelsLock:
    path: Path | None
    entries: tuple[LockEntry, ...]

    def get(self, name: str) -> LockEntry:
        for e in self.entries:
            if e.name == name:
                return e
        known = ", ".join(e.name for e in self.entries) or "none"
        raise LockError(f"{self.path or LOCK_NAME} has no model named {name!r}; known: {known}")

    def find(self, repo: str, file: str) -> LockEntry | None:
        for e in self.entries:
            if e.repo == repo and e.file == file:
                return e
        return None

    def names(self) -> list[str]:
        return [e.name for e in self.entries]


def parse_lock(text: str, path: Path | None = None) -> ModelsLock:
    where = str(path or LOCK_NAME)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LockError(f"{where}: not valid TOML ({e})") from None
    tables = data.get("model", [])
    if not isinstance(tables, list):
        raise LockError(f"{where}: `model` must be an array of tables ([[model]])")
    entries: list[LockEntry] = []
    for i, t in enumerate(tables):
        entries.append(_entry(t, f"{where}: [[model]] #{i + 1}" + (f" ({t.get('name')})" if "name" in t else "")))
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LockError(f"{where}: duplicate model names {', '.join(dup)}")
    return ModelsLock(path, tuple(entries))


def _entry(t: dict, where: str) -> LockEntry:
    missing = [f for f in _FIELDS if f not in t]
    if missing:
        raise LockError(f"{where}: missing {', '.join(missing)}")
    extra = sorted(set(t) - set(_FIELDS))
    if extra:
        raise LockError(f"{where}: unknown fields {', '.join(extra)}; allowed: {', '.join(_FIELDS)}")
    for f in _FIELDS:
        if f != "size" and (not isinstance(t[f], str) or not t[f]):
            raise LockError(f"{where}: {f} must be a non-empty string, got {t[f]!r}")
    if not isinstance(t["size"], int) or isinstance(t["size"], bool) or t["size"] <= 0:
        raise LockError(f"{where}: size must be a positive number of bytes, got {t['size']!r}")
    if not _SHA256.fullmatch(t["sha256"]):
        raise LockError(f"{where}: sha256 must be 64 lowercase hex digits, got {t['sha256']!r}")
    if not _REPO.fullmatch(t["repo"]):
        raise LockError(f"{where}: repo must look like owner/name, got {t['repo']!r}")
    if t["file"].startswith("/") or ".." in Path(t["file"]).parts:
        raise LockError(f"{where}: file must be a relative path inside the repo, got {t['file']!r}")
    return LockEntry(**{f: t[f] for f in _FIELDS})


def find_lock_file(settings: "Settings | None" = None, cwd: Path | None = None) -> Path | None:
    if settings is not None and settings.models_lock is not None:
        if not settings.models_lock.is_file():
            raise LockError(
                f"models.lock file {settings.models_lock} (from BITNET_MODELS_LOCK) does not exist; "
                "fix the path or unset BITNET_MODELS_LOCK"
            )
        return settings.models_lock
    local = (cwd or Path.cwd()) / LOCK_NAME
    if local.is_file():
        return local
    for parent in Path(__file__).resolve().parents:
        cand = parent / LOCK_NAME
        if cand.is_file() and (parent / "pyproject.toml").is_file():
            return cand
    return None


def load_lock(settings: "Settings | None" = None, cwd: Path | None = None) -> ModelsLock:
    """The models.lock in effect (an empty lock when none is found anywhere)."""
    path = find_lock_file(settings, cwd)
    if path is not None:
        return parse_lock(path.read_text(encoding="utf-8"), path)
    shipped = resources.files("bitnet_models").joinpath(LOCK_NAME)
    if shipped.is_file():
        return parse_lock(shipped.read_text(encoding="utf-8"), Path(str(shipped)))
    return ModelsLock(None, ())
