"""Fuzz the GGUF reader: mutated, truncated and spliced versions of a small valid file.

Whatever the bytes, `read_gguf` either succeeds (and then every tensor can be read and dequantized) or raises
GGUFError: never another exception, a crash or a hang. Each input runs under a 5-second CPU-time alarm
(CPU time, not wall time: the shared CI machine may be busy).
Run with `-s` to see how many inputs were tried.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitnet_models.errors import GGUFError
from bitnet_models.gguf import RawTensor, read_gguf, write_gguf
from bitnet_quantization import i2s_pack

pytestmark = pytest.mark.fast

FUZZ = settings(max_examples=1000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_COUNT = {"inputs": 0, "ok": 0, "gguf_error": 0}
# memory-backed when the machine has one: thousands of tiny files, no disk traffic
_DIR = tempfile.mkdtemp(prefix="gguf-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


def _seed_file() -> bytes:
    rng = np.random.default_rng(0)
    q = rng.integers(-1, 2, (2, 256)).astype(np.int8)
    md = {
        "general.name": "fuzz",
        "bitnet.block_count": 1,
        "bitnet.f": 1.5,
        "bitnet.b": True,
        "k.u8": np.uint8(3),
        "k.i64": np.int64(-5),
        "k.f64": np.float64(0.5),
        "tokenizer.ggml.tokens": ["<s>", "é", "", "Ġthe", "▁a"],
        "tokenizer.ggml.token_type": np.array([3, 1, 1, 1, 1], np.int32),
        "k.nested": [np.array([1, 2], np.int32), [3]],
    }
    tensors = [
        ("a", np.arange(8, dtype=np.float32), "F32"),
        ("w", RawTensor(i2s_pack(q, 0.5), (2, 256)), "I2_S"),
        ("t", q.astype(np.float32), "TQ2_0"),
        ("h", np.ones((2, 3), np.float32), "F16"),
    ]
    p = os.path.join(_DIR, "seed.gguf")
    write_gguf(p, "bitnet", md, tensors)
    with open(p, "rb") as f:
        return f.read()


SEED = _seed_file()
with read_gguf(os.path.join(_DIR, "seed.gguf")) as _f:
    HEADER_END = _f.data_offset  # header, metadata and tensor infos live before this


def _alarm(signum, frame):
    raise TimeoutError("the reader hung on a fuzz input")


def _check(data: bytes) -> None:
    _COUNT["inputs"] += 1
    path = os.path.join(_DIR, f"in-{os.getpid()}.gguf")
    with open(path, "wb") as f:
        f.write(data)
    old = signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, 5.0)
    try:
        with read_gguf(path) as g:
            for name in g.tensors:
                g.raw(name)
                g.array(name)
                g.dequantize(name)
            for v in g.metadata.values():
                if hasattr(v, "__len__") and not isinstance(v, (str, bytes)):
                    list(v)
        _COUNT["ok"] += 1
    except GGUFError as e:
        assert e.path == path and e.problem
        _COUNT["gguf_error"] += 1
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    shutil.rmtree(_DIR, ignore_errors=True)
    print(f"\nGGUF fuzz: {_COUNT['inputs']} inputs, {_COUNT['ok']} read fine, {_COUNT['gguf_error']} GGUFError, "
          "0 other exceptions, crashes or hangs", file=sys.stderr)


def test_seed_is_valid():
    _check(SEED)
    assert _COUNT["ok"] >= 1


@FUZZ
@given(cut=st.integers(0, len(SEED) - 1))
def test_truncation(cut):
    _check(SEED[:cut])


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_flips(edits):
    b = bytearray(SEED)
    for pos, val in edits:
        b[pos] = val
    _check(bytes(b))


INTERESTING = [0, 1, 2, 3, 7, 8, 31, 32, 33, 36, 37, 38, 39, 255, 256, 65535, 1 << 31, (1 << 32) - 1, 1 << 32,
               1 << 40, 1 << 60, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, len(SEED), len(SEED) - HEADER_END]


@FUZZ
@given(pos=st.integers(4, HEADER_END - 1), width=st.sampled_from([4, 8]), value=st.sampled_from(INTERESTING))
def test_header_fields(pos, width, value):
    # counts, lengths, type ids, dimensions and offsets all live in the header region: overwrite one with a
    # boundary value
    b = bytearray(SEED)
    field = struct.pack("<Q", value)[:width] if width == 8 else struct.pack("<I", value & 0xFFFFFFFF)
    b[pos : pos + width] = field[: len(b) - pos]
    _check(bytes(b))


@FUZZ
@given(a=st.integers(0, len(SEED)), b=st.integers(0, len(SEED)), at=st.integers(0, len(SEED)),
       replace=st.booleans())
def test_splices(a, b, at, replace):
    lo, hi = min(a, b), max(a, b)
    chunk = SEED[lo:hi]
    out = SEED[:at] + chunk + (SEED[at + len(chunk):] if replace else SEED[at:])
    _check(out)


@FUZZ
@given(at=st.integers(0, HEADER_END), junk=st.binary(min_size=1, max_size=64), delete=st.integers(0, 16))
def test_insertions_and_deletions(at, junk, delete):
    _check(SEED[:at] + junk + SEED[at + delete:])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=256))
def test_random_bytes_after_a_valid_header(data):
    _check(SEED[:24] + data)


def test_non_finite_scale_is_a_gguf_error(tmp_path):
    """A TQ2_0 block scale set to inf (a damaged file) makes dequantize raise GGUFError naming the tensor, not
    return NaN (inf x a zero code) or warn (the case the byte-flip fuzzing found: byte 929 set to 0x7c)."""
    from bitnet_quantization import tq2_0_encode

    w = np.zeros(256, np.float32)
    w[:3] = [1.0, -1.0, 0.0]
    raw = bytearray(tq2_0_encode(w))
    raw[64:66] = np.array([np.inf], "<f2").view(np.uint8).tobytes()  # the block's f16 scale
    p = tmp_path / "inf.gguf"
    write_gguf(p, "llama", {}, [("w", RawTensor(np.frombuffer(bytes(raw), np.uint8), (256,)), "TQ2_0")])
    with read_gguf(p) as g:
        with pytest.raises(GGUFError, match="non-finite block scales"):
            g.dequantize("w")
