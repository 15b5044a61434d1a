"""The launch plan of the programmatic-dependent decode kernels (bitnet_kernels.gpu.ops.pdl_warps / pdl_smem):
pure arithmetic on a device's limits, so it runs without a GPU (a stand-in runtime with an H100's numbers)."""

from types import SimpleNamespace

import pytest

from bitnet_kernels.gpu import ops

H100 = {"MULTIPROCESSOR_COUNT": 132, "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR": 233472,
        "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN": 232448}


def fake_rt(limits=H100):
    attrs = SimpleNamespace(**{k: k for k in limits})
    device = SimpleNamespace(get_attribute=lambda a: limits[a])
    return SimpleNamespace(device=device, cuda=SimpleNamespace(device_attribute=attrs))


def test_pdl_warps_cover_the_rows_with_one_block_an_sm():
    rt = fake_rt()
    # the 2B-4T shape: QKV 3840 rows in pairs, O 2560, gate/up 13824 in pairs (three a warp), down 2560 of K 6912
    cases = [((3840, 2560), "qkv", 15), ((2560, 2560), "resid", 20), ((13824, 2560), "relu2", 18),
             ((2560, 6912), "resid", 20)]
    for (n, k), epi, want in cases:
        w = ops.pdl_warps(rt, SimpleNamespace(n=n, k=k), epi)
        assert w == want
        r = 2 if epi in ops.PAIRED else 1
        assert w * ops.PDL_UPW.get(epi, 1) * 132 >= n // r  # every unit has a warp
    # past the kernels' bounds (a wider model): None, so the plain kernels run
    assert ops.pdl_warps(rt, SimpleNamespace(n=8192, k=2560), "resid") is None
    assert ops.pdl_warps(rt, SimpleNamespace(n=40000, k=2560), "relu2") is None


@pytest.mark.parametrize("dyn", [[35968, 92288, 96896, 42368],  # the 2B-4T shape: O, gate/up, down, QKV
                                 [2432, 2432, 7040, 2432],      # a small model
                                 [60000, 60000, 60000, 60000]])
def test_pdl_smem_lands_one_block_of_each_kernel_an_sm(dyn):
    rt = fake_rt()
    total = H100["MAX_SHARED_MEMORY_PER_MULTIPROCESSOR"]
    static = [3072, 2560, 3072, 3328]
    out = ops.pdl_smem(rt, dyn, static)
    assert out is not None
    use = [d + s for d, s in zip(out, static)]
    assert all(o >= d for o, d in zip(out, dyn))  # never below what the kernel needs
    assert 2 * use[0] >= total + ops.PDL_SMEM_MARGIN  # the first (after the attention): one an SM
    for i in range(1, len(use)):
        assert use[i - 1] + use[i] <= total  # a block of each of two consecutive kernels fits
        assert use[i - 1] + 2 * use[i] >= total + ops.PDL_SMEM_MARGIN  # two of one beside the one before do not


def test_pdl_smem_refuses_what_cannot_share_an_sm():
    rt = fake_rt()
    assert ops.pdl_smem(rt, [35968, 150000, 96896, 42368], [3072] * 4) is None
