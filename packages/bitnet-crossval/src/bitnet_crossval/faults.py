"""Deliberately wrong engine settings, to show that the checks catch a wrong engine (and so that a green
receipt means something). Each fault changes a loaded model in place; the receipt records which one ran."""

from __future__ import annotations

from bitnet_crossval.errors import CrossValError


def no_activation_quantization(model) -> int:
    """Ternary layers computed in float: the weights dequantized (codes x scale) and the activations left
    unquantized (no int8 / Q8_K step), the mistake of an engine that skips activation quantization.
    Returns how many layers changed."""
    from bitnet_inference.linear import DenseLinear

    changed = 0
    for layer in model.net.layers:
        for name, lin in layer.proj.items():
            if lin.numerics_kind == "f32":
                continue
            dense = DenseLinear(lin.name, model.gguf.dequantize(lin.name), model.numerics)
            dense.out_scale = lin.out_scale
            layer.proj[name] = dense
            changed += 1
    if changed == 0:
        raise CrossValError("fault no-act-quant changes nothing in a model without ternary (I2_S/TQ1_0/TQ2_0) "
                            "layers; pick a quantized model")
    return changed


FAULTS = {
    "no-act-quant": (no_activation_quantization,
                     "activation quantization off: ternary layers as float matmuls on unquantized activations"),
}


def apply_fault(name: str, model) -> str:
    try:
        fn, what = FAULTS[name]
    except KeyError:
        raise CrossValError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None
    n = fn(model)
    return f"{what} ({n} layers)"
