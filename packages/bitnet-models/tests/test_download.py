"""`bitnet download` against a real loopback HTTP server that answers the Hugging Face file API.

The server (http.server on 127.0.0.1, port 0, in a thread) answers HEAD/GET /{repo}/resolve/{revision}/{file} the
way the Hub does: a 302 to a content URL carrying X-Repo-Commit, X-Linked-Etag and X-Linked-Size, then the bytes
with ETag, Content-Length and Range support. HF_ENDPOINT points at it, so huggingface_hub does its real HTTP work.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from bitnet_models.download import ChecksumError, DownloadError, OfflineError, download_model, resolve_url
from bitnet_models.gguf import read_gguf
from bitnet_models.lock import LockError, parse_lock
from bitnet_models.mock import write_mock_model
from bitnet_models.settings import Settings

pytestmark = pytest.mark.fast

REPO = "test-org/tiny-gguf"
REV = "0123456789abcdef0123456789abcdef01234567"
FILE = "tiny-i2_s.gguf"


class FakeHub:
    """What the server serves and what it saw; tests script failures through the public fields."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail: dict[str, list[int]] = {"HEAD": [], "GET": []}  # statuses to answer first, per method
        self.cut_after: int | None = None  # the first full GET sends only this many bytes, then drops the connection
        self.lock = threading.Lock()

    def gets(self) -> list[tuple[str, str, dict[str, str]]]:
        return [r for r in self.requests if r[0] == "GET"]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: a dropped body is seen as a short read

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, body: bool) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        with hub.lock:
            hub.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            queued = hub.fail[self.command].pop(0) if hub.fail[self.command] else None
        if queued is not None:
            return self._empty(queued)
        parts = self.path.lstrip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":  # /{owner}/{name}/resolve/{rev}/{file}
            repo, rev, file = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            data = hub.files.get((repo, rev, file))
            if data is None:
                return self._empty(404, {"X-Error-Code": "EntryNotFound"})
            sha = hashlib.sha256(data).hexdigest()
            return self._empty(
                302,
                {
                    "Location": f"/cdn/{repo.replace('/', '--')}/{rev}/{file}",
                    "X-Repo-Commit": rev,
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{sha}"',
                },
            )
        if parts[0] == "cdn" and len(parts) >= 4:
            repo, rev, file = parts[1].replace("--", "/"), parts[2], "/".join(parts[3:])
            data = hub.files.get((repo, rev, file))
            if data is None:
                return self._empty(404)
            return self._content(hub, data, body)
        return self._empty(404)

    def _content(self, hub: FakeHub, data: bytes, body: bool) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes=") : -1])
        chunk = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(chunk)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        with hub.lock:
            cut, hub.cut_after = (hub.cut_after, None) if start == 0 else (None, hub.cut_after)
        if cut is not None:
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    return write_mock_model(tmp_path_factory.mktemp("src") / "tiny.gguf").read_bytes()


@pytest.fixture
def hub(gguf_bytes, monkeypatch):
    # Loopback only: a proxy configured on the machine must not see these requests.
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    from huggingface_hub.utils import close_session

    close_session()  # the next request builds a client that reads NO_PROXY
    h = FakeHub()
    h.files[(REPO, REV, FILE)] = gguf_bytes
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.hub = h  # type: ignore[attr-defined]
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    h.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield h
    server.shutdown()
    server.server_close()


def lock_for(data: bytes, sha256: str | None = None, size: int | None = None):
    return parse_lock(
        f"""
[[model]]
name = "tiny"
repo = "{REPO}"
revision = "{REV}"
file = "{FILE}"
sha256 = "{sha256 or hashlib.sha256(data).hexdigest()}"
size = {size or len(data)}
arch = "bitnet-b1.58"
quant = "I2_S"
license = "MIT"
"""
    )


def settings_for(hub: FakeHub, tmp_path: Path, **env: str) -> Settings:
    environ = {"HF_ENDPOINT": hub.url, "BITNET_CACHE": str(tmp_path / "cache"), "HF_TOKEN": "hf_test_token",
               "BITNET_DOWNLOAD_BACKOFF": "0.01", "BITNET_DOWNLOAD_RETRIES": "3"}
    environ.update(env)
    return Settings.from_env(environ)


class Sleeps(list):
    def __call__(self, s: float) -> None:
        self.append(s)


def final_path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "hub" / "test-org--tiny-gguf" / REV / FILE


def test_success_places_verified_file_and_sends_token(hub, tmp_path, gguf_bytes):
    s = settings_for(hub, tmp_path)
    r = download_model("tiny", settings=s, lock=lock_for(gguf_bytes), progress=False)
    assert r.path == final_path(tmp_path)
    assert r.path.read_bytes() == gguf_bytes
    assert (r.downloaded, r.verified, r.attempts) == (True, True, 1)
    assert not r.path.with_name(FILE + ".part").exists()
    with read_gguf(r.path) as f:  # an ordinary GGUF came through
        assert f.architecture == "bitnet-b1.58"
    heads = [q for q in hub.requests if q[0] == "HEAD"]
    assert heads[0][1] == f"/{REPO}/resolve/{REV}/{FILE}"  # the pinned revision, not main
    assert heads[0][2]["authorization"] == "Bearer hf_test_token"  # HF_TOKEN passed through
    assert [g[1] for g in hub.gets()] == [f"/cdn/test-org--tiny-gguf/{REV}/{FILE}"]
    # a second run finds it in the cache, verifies it, and makes no request
    n = len(hub.requests)
    again = download_model("tiny", settings=s, lock=lock_for(gguf_bytes), progress=False)
    assert (again.downloaded, again.verified, again.attempts) == (False, True, 0)
    assert len(hub.requests) == n


def test_repo_file_form_without_lock_entry(hub, tmp_path, gguf_bytes):
    s = settings_for(hub, tmp_path)
    r = download_model(REPO, FILE, settings=s, revision=REV, lock=parse_lock(""), progress=False)
    assert r.path.read_bytes() == gguf_bytes
    assert (r.entry, r.verified) == (None, False)


def test_resume_after_connection_cut_mid_file(hub, tmp_path, gguf_bytes, monkeypatch):
    # huggingface_hub writes in DOWNLOAD_CHUNK_SIZE pieces (10 MB): shrink them so a cut in a small file keeps bytes
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    cut = 20 * 4096
    hub.cut_after = cut
    sleeps = Sleeps()
    s = settings_for(hub, tmp_path)
    r = download_model("tiny", settings=s, lock=lock_for(gguf_bytes), progress=False, sleep=sleeps)
    assert r.path.read_bytes() == gguf_bytes
    ranges = [g[2].get("range") for g in hub.gets()]
    assert ranges == [None, f"bytes={cut}-"]  # the second GET continued where the cut left off
    # Who resumed depends on the huggingface_hub version: 2.x resumes in http_get itself once some bytes arrived
    # (after its own 1 s pause); otherwise our retry loop does it from the .part file. Either way, one Range GET.
    assert (r.attempts, sleeps) in ((1, []), (2, [0.01]))


def test_resume_partial_file_left_by_an_earlier_run(hub, tmp_path, gguf_bytes):
    part = final_path(tmp_path).with_name(FILE + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(gguf_bytes[:1000])
    r = download_model("tiny", settings=settings_for(hub, tmp_path), lock=lock_for(gguf_bytes), progress=False)
    assert r.path.read_bytes() == gguf_bytes
    assert [g[2].get("range") for g in hub.gets()] == ["bytes=1000-"]


def test_5xx_then_success_with_exponential_backoff(hub, tmp_path, gguf_bytes):
    hub.fail["HEAD"] = [502]
    hub.fail["GET"] = [503, 500]
    sleeps = Sleeps()
    r = download_model(
        "tiny", settings=settings_for(hub, tmp_path), lock=lock_for(gguf_bytes), progress=False, sleep=sleeps
    )
    assert r.path.read_bytes() == gguf_bytes
    assert r.attempts == 4
    assert sleeps == [0.01, 0.02, 0.04]


def test_5xx_every_time_gives_up_with_clear_error(hub, tmp_path, gguf_bytes):
    hub.fail["HEAD"] = [503] * 10
    sleeps = Sleeps()
    with pytest.raises(DownloadError, match=r"failed after 4 attempts \(last: HTTP 503\)"):
        download_model("tiny", settings=settings_for(hub, tmp_path), lock=lock_for(gguf_bytes), progress=False,
                       sleep=sleeps)
    assert sleeps == [0.01, 0.02, 0.04]
    assert not final_path(tmp_path).exists()


def test_404_is_not_retried(hub, tmp_path, gguf_bytes):
    sleeps = Sleeps()
    with pytest.raises(DownloadError, match="HTTP 404.*check the repo, file and revision"):
        download_model(REPO, "nope.gguf", settings=settings_for(hub, tmp_path), lock=parse_lock(""),
                       revision=REV, progress=False, sleep=sleeps)
    assert sleeps == []


def test_wrong_checksum_deletes_file_and_fails_loudly(hub, tmp_path, gguf_bytes):
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as e:
        download_model("tiny", settings=settings_for(hub, tmp_path), lock=lock_for(gguf_bytes, sha256=wrong),
                       progress=False)
    msg = str(e.value)
    assert hashlib.sha256(gguf_bytes).hexdigest() in msg and wrong in msg and "deleted" in msg
    folder = final_path(tmp_path).parent
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []  # no file, no .part


def test_size_announced_by_server_differs_from_lock(hub, tmp_path, gguf_bytes):
    with pytest.raises(ChecksumError, match="pins 12345"):
        download_model("tiny", settings=settings_for(hub, tmp_path),
                       lock=lock_for(gguf_bytes, size=12345), progress=False)
    assert hub.gets() == []


def test_offline_without_cached_file_is_a_clear_error(hub, tmp_path, gguf_bytes):
    for var in ("BITNET_OFFLINE", "HF_HUB_OFFLINE"):
        s = settings_for(hub, tmp_path, **{var: "1"})
        with pytest.raises(OfflineError, match="not in the cache .*offline mode is on"):
            download_model("tiny", settings=s, lock=lock_for(gguf_bytes), progress=False)
    assert hub.requests == []


def test_offline_with_cached_file_verifies_it_without_network(hub, tmp_path, gguf_bytes):
    download_model("tiny", settings=settings_for(hub, tmp_path), lock=lock_for(gguf_bytes), progress=False)
    n = len(hub.requests)
    r = download_model("tiny", settings=settings_for(hub, tmp_path, BITNET_OFFLINE="1"), lock=lock_for(gguf_bytes))
    assert (r.downloaded, r.verified) == (False, True)
    assert len(hub.requests) == n


def test_corrupted_cache_is_detected_and_downloaded_again(hub, tmp_path, gguf_bytes, capsys):
    s = settings_for(hub, tmp_path)
    path = download_model("tiny", settings=s, lock=lock_for(gguf_bytes), progress=False).path
    damaged = bytearray(gguf_bytes)
    damaged[len(damaged) // 2] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(damaged))
    r = download_model("tiny", settings=s, lock=lock_for(gguf_bytes), progress=False)
    assert (r.downloaded, r.verified) == (True, True)
    assert path.read_bytes() == gguf_bytes
    assert "is damaged" in capsys.readouterr().err
    assert len(hub.gets()) == 2


def test_corrupted_cache_offline_is_a_clear_error(hub, tmp_path, gguf_bytes):
    path = download_model("tiny", settings=settings_for(hub, tmp_path), lock=lock_for(gguf_bytes),
                          progress=False).path
    path.write_bytes(gguf_bytes[:-10])  # truncated
    with pytest.raises(ChecksumError, match="is damaged.*offline mode is on"):
        download_model("tiny", settings=settings_for(hub, tmp_path, HF_HUB_OFFLINE="true"),
                       lock=lock_for(gguf_bytes))


def test_unknown_lock_name_lists_known_ones(tmp_path, gguf_bytes):
    with pytest.raises(LockError, match="no model named 'nope'; known: tiny"):
        download_model("nope", settings=Settings.from_env({"BITNET_CACHE": str(tmp_path)}), lock=lock_for(gguf_bytes))


def test_resolve_url_quotes_revision_and_file():
    assert resolve_url("http://h/", "a/b", "refs/pr/1", "x y.gguf") == "http://h/a/b/resolve/refs%2Fpr%2F1/x%20y.gguf"


def test_cli_download_prints_the_path(hub, tmp_path, gguf_bytes, monkeypatch, capsys):
    from bitnet.cli import main

    lock = tmp_path / "test.lock"
    lock.write_text(
        f'[[model]]\nname = "tiny"\nrepo = "{REPO}"\nrevision = "{REV}"\nfile = "{FILE}"\n'
        f'sha256 = "{hashlib.sha256(gguf_bytes).hexdigest()}"\nsize = {len(gguf_bytes)}\n'
        'arch = "bitnet-b1.58"\nquant = "I2_S"\nlicense = "MIT"\n'
    )
    monkeypatch.setenv("BITNET_MODELS_LOCK", str(lock))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("BITNET_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["download", "tiny", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{final_path(tmp_path)}\n"
    assert "sha256 verified against models.lock (tiny)" in err
    assert final_path(tmp_path).read_bytes() == gguf_bytes


@pytest.mark.parametrize("file, revision", [("../../escape.gguf", None), ("/abs.gguf", None), ("m.gguf", "../x")])
def test_paths_that_would_leave_the_cache_are_rejected(tmp_path, file, revision):
    s = Settings.from_env({"BITNET_CACHE": str(tmp_path / "cache")})
    with pytest.raises(DownloadError, match="must be a relative name inside the repo"):
        download_model("o/r", file, settings=s, revision=revision, lock=parse_lock(""))
    assert not (tmp_path / "cache").exists()
