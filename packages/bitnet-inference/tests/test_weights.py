"""Weights resident on huge pages (the fast path's default) serve the same bytes as the memory map."""

import shutil

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


def test_past_the_huge_page_budget_the_copy_goes_on_in_small_pages(fixtures):
    g = read_gguf(fixtures / "b158-a-i2s.gguf")
    r = ResidentWeights(g, min_bytes=0, huge_budget_s=0.0)  # the deadline has passed before the first piece
    assert r.small_pages_from is not None
    for name in g.tensors:
        np.testing.assert_array_equal(r.raw(name), g.raw(name))
    assert ResidentWeights(g, min_bytes=0, huge_budget_s=None).small_pages_from is None
    assert isinstance(place_weights(g, "auto", True), ResidentWeights)
