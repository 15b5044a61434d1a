import pytest

import bitnet_kernels as bk
from bitnet_kernels.cpu import _available_isas

ISAS = _available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once on every ISA path this CPU can execute (VNNI, AVX2, portable C)."""
    old = bk.force_isa(request.param)
    yield request.param
    bk.force_isa(old)


@pytest.fixture(params=[1, 2])
def threads(request):
    old = bk.get_num_threads()
    bk.set_num_threads(request.param)
    yield request.param
    bk.set_num_threads(old)
