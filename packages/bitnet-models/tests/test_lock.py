"""models.lock: the shipped file parses and pins the 2B-4T model; malformed locks fail naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitnet_models.lock import LockError, download_path, find_lock_file, load_lock, parse_lock
from bitnet_models.settings import Settings

pytestmark = pytest.mark.fast

ROOT_LOCK = Path(__file__).resolve().parents[3] / "models.lock"

GOOD = """
[[model]]
name = "m"
repo = "o/r"
revision = "abc"
file = "sub/m.gguf"
sha256 = "%s"
size = 10
arch = "bitnet-b1.58"
quant = "I2_S"
license = "MIT"
""" % ("a" * 64)


def test_repository_lock_pins_the_2b4t_model():
    lock = parse_lock(ROOT_LOCK.read_text(), ROOT_LOCK)
    e = lock.get("bitnet-b1.58-2B-4T")
    assert (e.repo, e.file) == ("microsoft/bitnet-b1.58-2B-4T-gguf", "ggml-model-i2_s.gguf")
    assert e.size == 1_187_801_280
    assert e.sha256 == "4221b252fdd5fd25e15847adfeb5ee88886506ba50b8a34548374492884c2162"
    assert (e.arch, e.quant, e.license) == ("bitnet-b1.58", "I2_S", "MIT")
    assert len(e.revision) == 40 and int(e.revision, 16) >= 0  # a pinned commit, not a branch
    assert lock.find(e.repo, e.file) == e


def test_entry_cache_path():
    e = parse_lock(GOOD).get("m")
    assert e.cache_path(Path("/c")) == Path("/c/hub/o--r/abc/sub/m.gguf") == download_path(Path("/c"), "o/r", "abc", "sub/m.gguf")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('size = 10', 'size = -1'), "size must be a positive number of bytes"),
        (lambda t: t.replace('size = 10', 'size = "10"'), "size must be a positive number of bytes"),
        (lambda t: t.replace("a" * 64, "A" * 64), "sha256 must be 64 lowercase hex digits"),
        (lambda t: t.replace('repo = "o/r"', 'repo = "justname"'), "repo must look like owner/name"),
        (lambda t: t.replace('license = "MIT"\n', ""), "missing license"),
        (lambda t: t + 'colour = "red"\n', "unknown fields colour"),
        (lambda t: t.replace('file = "sub/m.gguf"', 'file = "../m.gguf"'), "relative path inside the repo"),
        (lambda t: t + t, "duplicate model names m"),
        (lambda t: t.replace("[[model]]", "[[model]"), "not valid TOML"),
        (lambda t: t.replace('revision = "abc"', 'revision = ""'), "revision must be a non-empty string"),
    ],
)
def test_malformed_lock_errors(edit, message):
    with pytest.raises(LockError, match=message):
        parse_lock(edit(GOOD), Path("x/models.lock"))


def test_unknown_name_lists_known():
    with pytest.raises(LockError, match="no model named 'z'; known: m"):
        parse_lock(GOOD).get("z")


def test_lock_file_search_order(tmp_path, monkeypatch):
    explicit = tmp_path / "explicit.lock"
    explicit.write_text(GOOD)
    s = Settings.from_env({"BITNET_MODELS_LOCK": str(explicit)})
    assert find_lock_file(s, cwd=tmp_path) == explicit
    assert load_lock(s).names() == ["m"]
    local = tmp_path / "models.lock"
    local.write_text(GOOD.replace('"m"', '"local"'))
    assert find_lock_file(Settings.from_env({}), cwd=tmp_path) == local
    # no ./models.lock: the repository's (this is a source checkout)
    assert find_lock_file(Settings.from_env({}), cwd=tmp_path / "elsewhere") == ROOT_LOCK


def test_missing_explicit_lock_names_the_variable(tmp_path):
    s = Settings.from_env({"BITNET_MODELS_LOCK": str(tmp_path / "nope.lock")})
    with pytest.raises(LockError, match=r"nope.lock \(from BITNET_MODELS_LOCK\) does not exist"):
        load_lock(s)
