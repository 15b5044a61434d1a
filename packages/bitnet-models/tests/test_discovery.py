"""Discovery and model selection: every source, the order between them, every strategy, and the error lines."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import bitnet_models.discovery as discovery
from bitnet_models.discovery import SOURCES, fallback_warning, list_models, resolve_model
from bitnet_models.errors import BitNetModelError, ModelNotFoundError
from bitnet_models.lock import parse_lock
from bitnet_models.mock import MOCK_NAME, write_mock_model
from bitnet_models.settings import Settings
from bitnet_models.strategy import ModelSelectionStrategy as S

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> bytes:
    return write_mock_model(tmp_path_factory.mktemp("g") / "m.gguf").read_bytes()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty world: cwd without ./models, an empty cache, no embedded model."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(discovery, "embedded_data_dir", lambda: None)
    return {"BITNET_CACHE": str(tmp_path / "cache")}


def lock_text(data: bytes) -> str:
    return f"""
[[model]]
name = "tiny"
repo = "o/tiny"
revision = "r1"
file = "tiny.gguf"
sha256 = "{hashlib.sha256(data).hexdigest()}"
size = {len(data)}
arch = "bitnet-b1.58"
quant = "I2_S"
license = "MIT"
"""


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_sources_are_the_documented_ones():
    assert SOURCES == ("argument", "BITNET_GGUF", "./models", "cache", "models.lock", "embedded", "mock")


def test_each_source_in_priority_order(env, tmp_path, gguf, monkeypatch):
    lock = parse_lock(lock_text(gguf))
    cache = tmp_path / "cache"
    emb = put(tmp_path / "pkgdata" / "default.gguf", gguf)
    monkeypatch.setattr(discovery, "embedded_data_dir", lambda: emb.parent)
    locked = put(cache / "hub" / "o--tiny" / "r1" / "tiny.gguf", gguf)
    cached = put(cache / "user.gguf", gguf)
    local = put(Path("models") / "local.gguf", gguf)
    explicit = put(tmp_path / "env.gguf", gguf)
    arg = put(tmp_path / "arg.gguf", gguf)
    mock_dir_file = put(cache / "mock" / "other.gguf", gguf)  # the mock's folder is never a source

    s = Settings.from_env(dict(env, BITNET_GGUF=str(explicit)))
    listing = list_models(s, lock)
    assert [(m.source, m.path) for m in listing.found] == [
        ("BITNET_GGUF", explicit),
        ("./models", Path("models/local.gguf")),
        ("cache", cached),
        ("models.lock", locked),
        ("embedded", emb),
    ]
    assert mock_dir_file not in [m.path for m in listing.found]
    assert listing.missing == ()
    assert listing.found[3].lock_entry.name == "tiny"

    expected = [("argument", arg), ("BITNET_GGUF", explicit), ("./models", local), ("cache", cached),
                ("models.lock", locked), ("embedded", emb)]
    for source, path in expected:
        r = resolve_model(str(arg) if source == "argument" else None, s, lock=lock)
        assert (r.source, r.is_mock) == (source, False)
        assert r.path.resolve() == path.resolve()
        # remove this source: the next one wins
        if source == "BITNET_GGUF":
            s = Settings.from_env(env)
        elif source != "argument":
            path.unlink()
    r = resolve_model(None, s, lock=lock)
    assert (r.source, r.is_mock) == ("mock", True)


def test_embedded_today_is_whatever_the_package_ships(tmp_path):
    d = discovery.embedded_data_dir()
    shipped = sorted(d.glob("*.gguf")) if d else []
    s = Settings.from_env({"BITNET_CACHE": str(tmp_path)})
    found = [m.path for m in discovery.iter_real_models(s, parse_lock("")) if m.source == "embedded"]
    assert found == shipped


def test_argument_may_name_a_downloaded_lock_entry(env, tmp_path, gguf):
    lock = parse_lock(lock_text(gguf))
    s = Settings.from_env(env)
    with pytest.raises(ModelNotFoundError, match=r"model tiny \(from -m\) is not downloaded .*run `bitnet download tiny`"):
        resolve_model("tiny", s, lock=lock)
    put(tmp_path / "cache" / "hub" / "o--tiny" / "r1" / "tiny.gguf", gguf)
    r = resolve_model("tiny", s, lock=lock)
    assert (r.source, r.lock_entry.name) == ("models.lock", "tiny")


def test_partly_downloaded_lock_entry_is_not_found(env, tmp_path, gguf):
    put(tmp_path / "cache" / "hub" / "o--tiny" / "r1" / "tiny.gguf", gguf[:1000])
    listing = list_models(Settings.from_env(env), parse_lock(lock_text(gguf)))
    assert [m.source for m in listing.found] == []
    assert [e.name for e in listing.missing] == ["tiny"]


def test_missing_bitnet_gguf_is_one_line_naming_path_and_variable(env):
    s = Settings.from_env(dict(env, BITNET_GGUF="missing.gguf"))
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model(None, s, lock=parse_lock(""))
    msg = str(e.value)
    assert msg.startswith("model file missing.gguf (from BITNET_GGUF) does not exist; ")
    assert "\n" not in msg and e.value.exit_code == 2


def test_missing_argument_is_one_line_naming_path_and_flag(env, tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"^model file .*nope.gguf \(from -m\) does not exist; .*bitnet download"):
        resolve_model(str(tmp_path / "nope.gguf"), Settings.from_env(env), lock=parse_lock(""))


def test_missing_explicit_path_is_not_replaced_by_discovery(env, gguf):
    put(Path("models") / "local.gguf", gguf)
    with pytest.raises(ModelNotFoundError):
        resolve_model(None, Settings.from_env(dict(env, BITNET_GGUF="missing.gguf")), lock=parse_lock(""))


def test_tokenizer_from_bitnet_tokenizer(env, tmp_path, gguf):
    model = put(tmp_path / "m.gguf", gguf)
    tok = put(tmp_path / "tokenizer.json", b"{}")
    r = resolve_model(None, Settings.from_env(dict(env, BITNET_GGUF=str(model), BITNET_TOKENIZER=str(tok))))
    assert (r.path, r.tokenizer_path) == (model, tok)
    with pytest.raises(ModelNotFoundError, match=r"tokenizer file .*nope.json \(from BITNET_TOKENIZER\) does not exist"):
        resolve_model(None, Settings.from_env(dict(env, BITNET_GGUF=str(model), BITNET_TOKENIZER=str(tmp_path / "nope.json"))))


def test_models_dir_picks_first_by_name(env, gguf):
    put(Path("models") / "b.gguf", gguf)
    put(Path("models") / "a.gguf", gguf)
    put(Path("models") / "notes.txt", b"x")
    assert resolve_model(None, Settings.from_env(env), lock=parse_lock("")).path == Path("models/a.gguf")


# --- strategies ---------------------------------------------------------------------------------------------------


def test_prefer_real_falls_back_to_mock_with_a_warning_every_time(env, tmp_path, capsys):
    s = Settings.from_env(env)
    for _ in range(2):
        r = resolve_model(None, s, lock=parse_lock(""))
        assert (r.source, r.is_mock, r.lock_entry) == ("mock", True, None)
        assert r.path == tmp_path / "cache" / "mock" / f"{MOCK_NAME}.gguf"
        err = capsys.readouterr().err
        assert err == fallback_warning(s, r.path) + "\n"
        assert err.startswith("WARNING: no real model found") and "bitnet download" in err


def test_prefer_real_uses_a_real_model_silently(env, gguf, capsys):
    put(Path("models") / "a.gguf", gguf)
    r = resolve_model(None, Settings.from_env(env), S.PREFER_REAL, lock=parse_lock(""))
    assert not r.is_mock and capsys.readouterr().err == ""


def test_force_real_without_model_says_how_to_get_one(env, gguf, capsys):
    with pytest.raises(ModelNotFoundError, match=r"no model found \(BITNET_MODEL_STRATEGY=force_real\).*`bitnet download tiny`"):
        resolve_model(None, Settings.from_env(env), S.FORCE_REAL, lock=parse_lock(lock_text(gguf)))
    assert capsys.readouterr().err == ""


def test_environment_strategy_reads_the_variable(env):
    s = Settings.from_env(dict(env, BITNET_MODEL_STRATEGY="force_real"))
    with pytest.raises(ModelNotFoundError, match="force_real"):
        resolve_model(None, s, lock=parse_lock(""))  # the default strategy is ENVIRONMENT
    s = Settings.from_env(dict(env, BITNET_MODEL_STRATEGY="mock_only"))
    assert resolve_model(None, s, lock=parse_lock("")).is_mock


def test_mock_only_ignores_real_models_without_warning(env, gguf, capsys):
    put(Path("models") / "a.gguf", gguf)
    r = resolve_model(None, Settings.from_env(env), S.MOCK_ONLY, lock=parse_lock(""))
    assert (r.source, r.is_mock) == ("mock", True)
    assert capsys.readouterr().err == ""


def test_mock_only_with_argument_is_rejected(env, tmp_path, gguf):
    model = put(tmp_path / "m.gguf", gguf)
    with pytest.raises(BitNetModelError, match="mock_only"):
        resolve_model(str(model), Settings.from_env(env), S.MOCK_ONLY, lock=parse_lock(""))


def test_fallback_forbidden_by_caller_or_strict_mode(env):
    with pytest.raises(ModelNotFoundError, match="never uses the mock model"):
        resolve_model(None, Settings.from_env(env), S.PREFER_REAL, allow_mock=False, lock=parse_lock(""))
    strict = Settings.from_env(dict(env, BITNET_STRICT_NO_FAKE_GPU="1"))
    with pytest.raises(ModelNotFoundError, match="BITNET_STRICT_NO_FAKE_GPU=1 forbids the mock model"):
        resolve_model(None, strict, S.PREFER_REAL, lock=parse_lock(""))


def test_embedded_model_found_when_placed_in_package_data(tmp_path, gguf, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "bitnet_models_data"
    monkeypatch.setattr(discovery, "embedded_data_dir", lambda: data_dir)
    s = Settings.from_env({"BITNET_CACHE": str(tmp_path / "cache")})
    with pytest.raises(ModelNotFoundError):  # nothing there yet: force_real finds no model
        resolve_model(None, s, S.FORCE_REAL, lock=parse_lock(""))
    put(data_dir / "bitnet-py-default.gguf", gguf)
    r = resolve_model(None, s, S.FORCE_REAL, lock=parse_lock(""))
    assert (r.source, r.path, r.is_mock) == ("embedded", data_dir / "bitnet-py-default.gguf", False)
