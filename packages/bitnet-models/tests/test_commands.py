"""`bitnet models` and the CLI's error line for a missing model (`bitnet download` is exercised in test_download)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bitnet_models.discovery as discovery
from bitnet.cli import main
from bitnet_models.mock import MOCK_NAME, write_mock_model

pytestmark = pytest.mark.fast


@pytest.fixture
def world(tmp_path, monkeypatch):
    """cwd with no ./models, an empty cache, a one-entry models.lock, no embedded model, a clean environment."""
    data = write_mock_model(tmp_path / "src.gguf").read_bytes()
    lock = tmp_path / "test.lock"
    lock.write_text(
        f'[[model]]\nname = "tiny"\nrepo = "o/tiny"\nrevision = "r1"\nfile = "tiny.gguf"\n'
        f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nsize = {len(data)}\narch = "bitnet-b1.58"\n'
        f'quant = "I2_S"\nlicense = "MIT"\n'
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for var in list(os.environ):
        if var.startswith(("BITNET_", "HF_")) or var == "XDG_CACHE_HOME":
            monkeypatch.delenv(var)
    monkeypatch.setenv("BITNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BITNET_MODELS_LOCK", str(lock))
    monkeypatch.setattr(discovery, "embedded_data_dir", lambda: None)
    return tmp_path, data


def test_models_lists_nothing_found_missing_entry_and_mock(world, capsys):
    tmp, _ = world
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "found:       no real model" in out
    assert "tiny" in out and "o/tiny tiny.gguf" in out
    assert f"a run would use the MOCK model {tmp / 'cache' / 'mock' / (MOCK_NAME + '.gguf')}" in out


def test_models_json_reports_sources(world, capsys, monkeypatch):
    tmp, data = world
    Path("models").mkdir()
    Path("models/tiny.gguf").write_bytes(data)  # a copy of the lock entry: recognised by name and size
    locked = tmp / "cache" / "hub" / "o--tiny" / "r1" / "tiny.gguf"
    locked.parent.mkdir(parents=True)
    locked.write_bytes(data)
    assert main(["models", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(m["source"], m["lock_name"]) for m in out["found"]] == [("./models", "tiny"), ("models.lock", "tiny")]
    assert out["missing"] == []
    assert out["would_use"] == {"source": "./models", "path": "models/tiny.gguf"}
    assert out["strategy"] == "prefer_real"


def test_models_force_real_without_model_says_a_run_would_fail(world, capsys, monkeypatch):
    monkeypatch.setenv("BITNET_MODEL_STRATEGY", "force_real")
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["would_use"] is None


def test_missing_bitnet_gguf_is_one_error_line_and_exit_2(world, capsys, monkeypatch):
    monkeypatch.setenv("BITNET_GGUF", "missing.gguf")
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model file missing.gguf (from BITNET_GGUF) does not exist; ")
    assert err.count("\n") == 1


def test_invalid_variable_is_one_error_line(world, capsys, monkeypatch):
    monkeypatch.setenv("BITNET_MODEL_STRATEGY", "sometimes")
    assert main(["models"]) == 2
    assert capsys.readouterr().err == (
        "error: BITNET_MODEL_STRATEGY=sometimes is not valid; allowed: prefer_real, force_real, mock_only\n"
    )


def test_download_offline_not_cached_is_one_error_line(world, capsys):
    assert main(["download", "tiny", "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: o/tiny/tiny.gguf (revision r1) is not in the cache") and err.count("\n") == 1


def test_real_bitnet_command_exit_code(world):
    env = dict(os.environ, BITNET_GGUF="missing.gguf")
    p = subprocess.run([sys.executable, "-m", "bitnet.cli", "models"], env=env, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("error: model file missing.gguf (from BITNET_GGUF) does not exist;")
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_generate_with_missing_bitnet_gguf_is_one_line_exit_2(world):
    """The issue's check: `BITNET_GGUF=missing.gguf bitnet generate -p hi` (bitnet-inference calls resolve_model)."""
    env = dict(os.environ, BITNET_GGUF="missing.gguf")
    p = subprocess.run([sys.executable, "-m", "bitnet.cli", "generate", "-p", "hi"], env=env, capture_output=True,
                       text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("error: model file missing.gguf (from BITNET_GGUF) does not exist;")
    assert p.stderr.count("\n") == 1 and p.stdout == ""


def test_generate_runs_the_mock_model_through_the_real_engine(world):
    tmp, _ = world
    # mock_only: the subprocess cannot see this test's monkeypatches, and a model shipped in the package later
    # would otherwise win over the mock (the prefer_real fallback warning is tested in test_discovery)
    env = dict(os.environ, BITNET_MODEL_STRATEGY="mock_only")
    p = subprocess.run([sys.executable, "-m", "bitnet.cli", "generate", "-p", "hi", "-n", "3", "--temp", "0"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    mock = tmp / "cache" / "mock" / f"{MOCK_NAME}.gguf"
    assert f"model: {mock} (from mock)" in p.stderr
    assert "WARNING" not in p.stderr  # chosen, not fallen back to
    assert mock.is_file() and p.stdout.strip() != ""
