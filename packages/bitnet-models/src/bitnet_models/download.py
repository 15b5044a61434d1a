"""`bitnet download`: fetch a pinned model file from the Hugging Face Hub into the cache (ADR 0001, part 3).

What it guarantees:
- the pinned revision from models.lock (or --revision), HF_TOKEN and HF_ENDPOINT from Settings;
- retries with exponential backoff on 5xx answers and connection errors, each retry resuming the partial file;
- resume across runs: the partial file <final>.part is kept between attempts and runs and continued with a Range
  request;
- sha256 and size checked against models.lock before the file gets its final name (a mismatch deletes it and fails);
- atomic placement: the file appears under its final name only complete and verified (os.replace);
- offline mode (BITNET_OFFLINE / HF_HUB_OFFLINE): no network at all; a file already in the cache is verified and
  used, a missing one is a clear error;
- a cached file whose sha256 no longer matches the lock is reported, deleted and downloaded again.

The HTTP work is huggingface_hub's (`get_hf_file_metadata` for the HEAD, `http_get` for the ranged GET with its
progress bar); the retry loop, the partial file and the verification are ours so that each is testable.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote, urlsplit

from bitnet_models.errors import BitNetModelError
from bitnet_models.lock import LockEntry, ModelsLock, download_path, load_lock
from bitnet_models.settings import Settings

log = logging.getLogger(__name__)


class DownloadError(BitNetModelError):
    """A model file could not be downloaded."""


class ChecksumError(DownloadError):
    """A downloaded (or cached) file does not match the sha256 or size models.lock pins."""


class OfflineError(DownloadError):
    """Offline mode is on and the file is not in the cache."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    entry: LockEntry | None  # the models.lock entry it was verified against (None: an unpinned REPO FILE)
    downloaded: bool  # False: it was already in the cache
    verified: bool  # sha256 checked against models.lock
    attempts: int  # HTTP attempts made (0 when nothing was fetched)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def resolve_url(endpoint: str, repo: str, revision: str, file: str) -> str:
    """The Hub's file URL: {endpoint}/{repo}/resolve/{revision}/{file}."""
    return f"{endpoint.rstrip('/')}/{repo}/resolve/{quote(revision, safe='')}/{quote(file)}"


def download_model(
    target: str,
    file: str | None = None,
    *,
    settings: Settings,
    revision: str | None = None,
    cache_dir: Path | None = None,
    lock: ModelsLock | None = None,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Download `target` (a models.lock name) or, with `file`, the file `file` of the Hub repo `target`."""
    lock = load_lock(settings) if lock is None else lock
    if file is None:
        entry: LockEntry | None = lock.get(target)
        repo, file = entry.repo, entry.file
    else:
        repo = target
        if "/" not in repo:
            raise DownloadError(f"repo {repo!r} must look like owner/name (or give a models.lock name alone)")
        entry = lock.find(repo, file)
    if entry is not None and revision is not None and revision != entry.revision:
        log.warning(
            "revision %s differs from the one models.lock pins (%s): the file will not be checked against the lock",
            revision,
            entry.revision,
        )
        entry = None
    revision = revision or (entry.revision if entry else "main")
    for what, value in (("file", file), ("revision", revision)):
        if value.startswith("/") or ".." in Path(value).parts:
            raise DownloadError(f"{what} {value!r} must be a relative name inside the repo (no '..', no leading '/')")
    cache = Path(cache_dir) if cache_dir is not None else settings.cache_dir
    dest = download_path(cache, repo, revision, file)
    if settings.offline and not dest.is_file():
        raise OfflineError(
            f"{repo}/{file} (revision {revision}) is not in the cache ({dest}) and offline mode is on "
            "(BITNET_OFFLINE / HF_HUB_OFFLINE): run once without offline mode, or copy the file to that path"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest):
        cached = _check_cached(dest, entry, settings)
        if cached is not None:
            return cached
        attempts = _fetch(repo, file, revision, dest, entry, settings, progress, sleep)
    return DownloadResult(dest, entry, True, entry is not None, attempts)


def _check_cached(dest: Path, entry: LockEntry | None, settings: Settings) -> DownloadResult | None:
    """A verified cached file as a result; None when it must be (re)downloaded. A damaged one is deleted."""
    if not dest.is_file():
        return None
    if entry is None:
        return DownloadResult(dest, None, False, False, 0)
    size = dest.stat().st_size
    digest = file_sha256(dest) if size == entry.size else None
    if digest == entry.sha256:
        return DownloadResult(dest, entry, False, True, 0)
    found = f"sha256 {digest}" if digest else f"{size} bytes"
    problem = (
        f"cached file {dest} is damaged: models.lock pins sha256 {entry.sha256} ({entry.size} bytes), "
        f"found {found}"
    )
    if settings.offline:
        raise ChecksumError(f"{problem}; offline mode is on, so it cannot be downloaded again: "
                            f"run `bitnet download {entry.name}` without offline mode")
    print(f"WARNING: {problem}; deleting it and downloading again", file=sys.stderr, flush=True)
    dest.unlink()
    return None


@contextlib.contextmanager
def _file_lock(dest: Path) -> Iterator[None]:
    """Serialize downloads of one file across processes (two writers would interleave the .part file)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(dest.with_name(dest.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fetch(
    repo: str,
    file: str,
    revision: str,
    dest: Path,
    entry: LockEntry | None,
    settings: Settings,
    progress: bool,
    sleep: Callable[[float], None],
) -> int:
    try:
        from huggingface_hub import get_hf_file_metadata
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers
    except ImportError:
        raise DownloadError(
            "downloading needs huggingface-hub, which is not installed: pip install 'bitnet-models[download]' "
            "(or 'bitnet[inference]')"
        ) from None

    url = resolve_url(settings.hf_endpoint, repo, revision, file)
    part = dest.with_name(dest.name + ".part")
    headers = build_hf_headers(token=settings.hf_token)
    # Our loop does the retrying (with its own backoff); the bar class is ours. Both keywords are passed only where
    # this huggingface_hub version has them.
    accepted = inspect.signature(http_get).parameters
    get_kwargs = {k: v for k, v in (("_nb_retries", 0), ("tqdm_class", _progress_bar_class(progress))) if k in accepted}
    what = f"{repo}/{file} (revision {revision}) from {settings.hf_endpoint}"
    tries = settings.download_retries + 1
    for attempt in range(1, tries + 1):
        try:
            meta = get_hf_file_metadata(url, token=settings.hf_token)
            if entry is not None and meta.size is not None and meta.size != entry.size:
                raise ChecksumError(
                    f"{what} is {meta.size} bytes but models.lock pins {entry.size} for {entry.name}: "
                    "the repo changed under the pinned name; check the revision in models.lock"
                )
            done = part.stat().st_size if part.exists() else 0
            if meta.size is not None and done > meta.size:  # a stale partial file from some other content
                part.unlink()
                done = 0
            same_host = _origin(meta.location) == _origin(url)
            get_headers = headers if same_host else {k: v for k, v in headers.items() if k.lower() != "authorization"}
            with open(part, "ab") as fh:
                http_get(
                    meta.location,
                    fh,
                    resume_size=done,
                    headers=get_headers,
                    expected_size=meta.size,
                    displayed_filename=Path(file).name,
                    **get_kwargs,
                )
            break
        except OfflineModeIsEnabled:
            raise OfflineError(
                f"{what}: huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported) and "
                f"the file is not in the cache ({dest})"
            ) from None
        except HfHubHTTPError as e:
            status = e.response.status_code if getattr(e, "response", None) is not None else None
            if status is not None and status < 500 and status not in (408, 429):
                raise _http_error(what, status, e) from None
            failure = f"HTTP {status}"
        except ChecksumError:
            raise
        except Exception as e:
            if not _is_transient(e):
                raise
            failure = f"{type(e).__name__}: {_first_line(e)}"
        if attempt == tries:
            raise DownloadError(
                f"{what}: failed after {tries} attempts (last: {failure}); the partial file {part} is kept and "
                "the next `bitnet download` resumes it"
            )
        delay = settings.download_backoff_s * 2 ** (attempt - 1)
        done = part.stat().st_size if part.exists() else 0
        print(
            f"download attempt {attempt}/{tries} failed ({failure}); {done} bytes kept, retrying in {delay:g} s",
            file=sys.stderr,
            flush=True,
        )
        sleep(delay)
    _verify_and_place(part, dest, entry, what)
    return attempt


def _verify_and_place(part: Path, dest: Path, entry: LockEntry | None, what: str) -> None:
    if entry is not None:
        size = part.stat().st_size
        digest = file_sha256(part)
        if size != entry.size or digest != entry.sha256:
            part.unlink()
            raise ChecksumError(
                f"{what}: the downloaded file has sha256 {digest} ({size} bytes) but models.lock pins "
                f"{entry.sha256} ({entry.size} bytes) for {entry.name}; the file was deleted. If the lock is right "
                "the server sent other content: retry later or use another HF_ENDPOINT"
            )
    else:
        log.warning("%s is not in models.lock: placed without a sha256 check", what)
    os.replace(part, dest)


def _http_error(what: str, status: int, e: Exception) -> DownloadError:
    if status in (401, 403):
        fix = "the repo may be gated or private: accept its terms on the Hub and set HF_TOKEN"
    elif status == 404:
        fix = "check the repo, file and revision (models.lock or --revision)"
    else:
        fix = "check the request"
    return DownloadError(f"{what}: HTTP {status} ({_first_line(e)}); {fix}")


def _is_transient(e: Exception) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    # httpx/httpx2 transport errors (connect, read, timeout, protocol), requests' connection errors, the short
    # read huggingface_hub reports as a bare OSError, and the socket errors under them
    if names & {"TransportError", "TimeoutException", "ConnectionError", "Timeout", "ChunkedEncodingError"}:
        return True
    return type(e) in (OSError, ConnectionError, TimeoutError, ConnectionResetError, ConnectionAbortedError)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _origin(url: str) -> tuple[str, str]:
    u = urlsplit(url)
    return u.scheme, u.netloc


def _progress_bar_class(progress: bool):
    """A tqdm bar on stderr that shows only on a terminal and disappears when done."""
    from tqdm import tqdm

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = None if progress else True  # None: tqdm shows the bar only on a TTY
            kwargs.setdefault("leave", False)
            super().__init__(*args, **kwargs)

    return Bar
