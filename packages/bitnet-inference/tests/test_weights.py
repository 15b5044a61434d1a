"""Weights resident on huge pages (the fast path's default) serve the same bytes as the memory map."""

import shutil
import threading

import numpy as np
import pytest

from bitnet_inference import EngineError, Model
from bitnet_inference.weights import ResidentWeights, place_weights
from bitnet_models.gguf import read_gguf

pytestmark = pytest.mark.fast


def test_resident_tensors_equal_the_file(fixtures):
    g = read_gguf(fixtures / "b158-a-i2s.gguf")
    r = ResidentWeights(g, min_bytes=0)
    assert r.resident_bytes >= sum(i.nbytes for i in g.tensors.values() if i.qtype.name in ("I2_S", "F16", "F32"))
    for name, info in g.tensors.items():
        np.testing.assert_array_equal(r.raw(name), g.raw(name))
        a, b = r.array(name), g.array(name)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
        if info.qtype.name == "I2_S":
            assert not np.shares_memory(r.raw(name), g.raw(name))
            assert not r.raw(name).flags.writeable
    assert r.metadata is g.metadata  # everything else is the file's


def test_resident_and_mmap_models_give_the_same_logits(fixtures):
    path = fixtures / "b158-a-i2s.gguf"
    a = Model(path, n_ctx=16, weights="mmap")
    b = Model(path, n_ctx=16, weights="resident")
    assert type(a.weights).__name__ == "GGUFFile" and isinstance(b.weights, ResidentWeights)
    toks = [1, 5, 9, 2]
    np.testing.assert_array_equal(a.forward(toks, 0).view(np.uint32), b.forward(toks, 0).view(np.uint32))


def test_weights_mode_errors_and_auto(tmp_path, fixtures):
    g = read_gguf(fixtures / "b158-a-i2s.gguf")
    with pytest.raises(EngineError, match="unknown weights placement 'disk'"):
        place_weights(g, "disk", True)
    assert place_weights(g, "auto", False) is g  # numpy / emulation paths read in place
    # a file cut short after its header was read: a typed error naming the tensor, not a short copy
    cut = tmp_path / "cut.gguf"
    shutil.copy(fixtures / "b158-a-i2s.gguf", cut)
    g2 = read_gguf(cut)
    with open(cut, "r+b") as fh:
        fh.truncate(cut.stat().st_size // 2)
    with pytest.raises(EngineError, match="truncated"):
        ResidentWeights(g2, min_bytes=0)


def test_past_the_load_budget_a_background_thread_copies_the_rest(fixtures):
    g = read_gguf(fixtures / "b158-a-i2s.gguf")
    r = ResidentWeights(g, min_bytes=0, huge_budget_s=0.0, background=False)  # deadline passed: nothing copied
    assert r.resident_fraction == 0.0 and not r.done.is_set()
    for name in g.tensors:  # served from the map meanwhile
        assert np.shares_memory(r.raw(name), g.raw(name))
    r = ResidentWeights(g, min_bytes=0, huge_budget_s=0.0)
    assert r.wait(30) and r.resident_fraction == 1.0 and r.background_seconds is not None
    names = r.take_new()
    assert sorted(names) == sorted(r._offsets) and r.take_new() == []  # each name handed over once
    for name in g.tensors:
        np.testing.assert_array_equal(r.raw(name), g.raw(name))
        if name in names:
            assert not np.shares_memory(r.raw(name), g.raw(name)) and not r.raw(name).flags.writeable
    full = ResidentWeights(g, min_bytes=0, huge_budget_s=None)  # everything before the load returns
    assert full.done.is_set() and full.take_new() == [] and full.resident_fraction == 1.0
    assert isinstance(place_weights(g, "auto", True), ResidentWeights)
    assert place_weights(g, "resident", True).resident_fraction == 1.0


def test_model_adopts_weights_as_they_arrive(fixtures, monkeypatch):
    import bitnet_inference.weights as W

    path = fixtures / "b158-a-i2s.gguf"
    ref = Model(path, n_ctx=16, weights="mmap")
    monkeypatch.setattr(W, "HUGE_BUDGET_S", 0.0)
    monkeypatch.setattr(W, "BIG", 0)  # the fixture's tensors are small: make them all resident
    go = threading.Event()  # hold the background copy until the model is built, so the test is deterministic
    copy_rest = W.ResidentWeights._copy_rest
    monkeypatch.setattr(W.ResidentWeights, "_copy_rest", lambda self, *a: (go.wait(30), copy_rest(self, *a)))
    m = Model(path, n_ctx=16)  # auto: everything left to the background copy
    w = m.weights
    lin = m.net.layers[0].proj["attn_q"]
    assert np.shares_memory(lin.raw, w._gguf.raw(lin.name))  # still the map
    toks = [1, 5, 9, 2]
    want = ref.forward(toks, 0)
    np.testing.assert_array_equal(want.view(np.uint32), m.forward(toks, 0).view(np.uint32))  # from the map
    go.set()
    assert w.wait(30)
    plan = m.net.plan
    got = m.forward(toks, 0)  # adopts first, then runs
    np.testing.assert_array_equal(want.view(np.uint32), got.view(np.uint32))
    assert not np.shares_memory(lin.raw, w._gguf.raw(lin.name))
    assert lin.raw.ctypes.data == w.raw(lin.name).ctypes.data
    assert (plan is None) == (m.net.plan is None) and (plan is None or m.net.plan is not plan)  # rebuilt
    for t in range(3):  # one-token steps through the rebuilt plan match the map's
        np.testing.assert_array_equal(ref.forward([t + 3], 4 + t).view(np.uint32),
                                      m.forward([t + 3], 4 + t).view(np.uint32))


def test_unmap_pages_keeps_the_bytes(fixtures):
    g = read_gguf(fixtures / "b158-a-i2s.gguf")
    name = max(g.tensors, key=lambda n: g.tensors[n].nbytes)
    before = g.raw(name).copy()
    g.unmap_pages(name)
    np.testing.assert_array_equal(g.raw(name), before)  # faulted back in from the page cache


def test_head_reads_the_copied_rows_from_the_arena(fixtures, monkeypatch):
    import bitnet_inference.weights as W

    path = fixtures / "b158-a-i2s.gguf"
    ref = Model(path, n_ctx=16, weights="mmap")
    monkeypatch.setattr(W, "HUGE_BUDGET_S", 0.0)
    monkeypatch.setattr(W, "BIG", 0)
    monkeypatch.setattr(W, "PIECE", 4096)  # many pieces a tensor, so the embedding can be half-copied
    held = {}
    copy_rest = W.ResidentWeights._copy_rest
    monkeypatch.setattr(W.ResidentWeights, "_copy_rest", lambda self, pieces, t0: held.update(w=self, p=pieces, t0=t0))
    m = Model(path, n_ctx=16)
    w = held["w"]
    name = "token_embd.weight"
    assert w.info(name).qtype.name == "F16"
    emb = [p for p in held["p"] if p[0].name == name]
    assert len(emb) > 2
    for p in emb[: len(emb) // 2]:
        assert w._copy(p, None, True) is None
    m.adopt_weights()
    parts = m.net.head_parts
    assert len(parts) == 2 and 0 < parts[1][0] < w.info(name).shape[0]
    assert not np.shares_memory(parts[0][1], w._gguf.raw(name)) and np.shares_memory(parts[1][1], w._gguf.raw(name))
    for toks, pos in (([1], 0), ([5], 1), ([9, 2, 4], 2)):  # one-token steps through the parts, then a batch
        np.testing.assert_array_equal(ref.forward(toks, pos).view(np.uint32), m.forward(toks, pos).view(np.uint32))
    copy_rest(w, [p for p in held["p"] if p not in emb[: len(emb) // 2]], held["t0"])  # the rest, in this thread
    assert w.done.is_set() and w.resident_fraction == 1.0
    m.adopt_weights()
    assert len(m.net.head_parts) == 1 and not np.shares_memory(m.net.output, w._gguf.raw(name))
    np.testing.assert_array_equal(ref.forward([3], 5).view(np.uint32), m.forward([3], 5).view(np.uint32))
