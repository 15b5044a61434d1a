"""Quant-type table and bit-exact numpy reference codecs for BitNet b1.58 weights and activations."""

from bitnet_quantization.activations import (
    ActI8,
    Q8K,
    dequantize_act_i8,
    quantize_act_i8,
    quantize_q8_k,
)
from bitnet_quantization.errors import BitNetError
from bitnet_quantization.ternary import (
    absmean_ternarize,
    i2s_pack,
    i2s_unpack_codes,
    i2s_scale,
    tq1_0_decode,
    tq1_0_encode,
    tq2_0_decode,
    tq2_0_encode,
    ternary_codes_from_tq1_0,
    ternary_codes_from_tq2_0,
)
from bitnet_quantization.types import (
    QUANT_TYPES,
    QuantType,
    QuantTypeError,
    quant_type,
    quant_type_by_id,
)

__all__ = [
    "BitNetError",
    "ActI8",
    "Q8K",
    "QUANT_TYPES",
    "QuantType",
    "QuantTypeError",
    "absmean_ternarize",
    "dequantize_act_i8",
    "i2s_pack",
    "i2s_scale",
    "i2s_unpack_codes",
    "quant_type",
    "quant_type_by_id",
    "quantize_act_i8",
    "quantize_q8_k",
    "ternary_codes_from_tq1_0",
    "ternary_codes_from_tq2_0",
    "tq1_0_decode",
    "tq1_0_encode",
    "tq2_0_decode",
    "tq2_0_encode",
]
