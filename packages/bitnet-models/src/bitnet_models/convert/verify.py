"""`--verify`: run a few tokens through transformers' BitNet and through the converted GGUF, and compare logits.

The reference is transformers' own model (BitNetForCausalLM, loaded from the checkpoint; a 1bitLLM checkpoint is
loaded into BitNetForCausalLM with hidden_act silu and its tensors renamed, which is the same graph as 1bitLLM's
remote code). Each GGUF weight type runs with its engine's activation numerics, so the reference is told to do
the same, and a correct conversion then agrees to float rounding:
- I2_S: int8 activations per token: transformers' ActQuant as it is.
- TQ1_0 / TQ2_0: llama.cpp's Q8_K activations (one scale per 256 values) and the fp16 block scale d: ActQuant is
  swapped for the project's Q8_K reference quantizer and the weight scale rounded to fp16.
- F32 / F16: float activations (no quantization): ActQuant is swapped for the identity (F16: weights rounded).
  F16 weights in arch `bitnet` (llama.cpp; and any single row in bitnet.cpp) meet F16 activations, as ggml
  converts them to its F16 vec_dot type: "f16-ggml" rounds the reference's activations to F16 too.
The plain transformers comparison (per-token activations for every type) is printed too.
Needs the `convert` extra (torch, transformers, safetensors, accelerate).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_models.convert.errors import VerifyError
from bitnet_models.convert.hfconfig import HFConfig, read_config

NUMERICS = {"I2_S": "i2s", "TQ2_0": "q8k", "TQ1_0": "q8k", "F32": "f32", "F16": "f16", "BF16": "f32"}


def matched_numerics(arch: str, weight_type: str, n_tokens: int) -> str:
    """The reference numerics that match our engine for a file: F16 weights meet F16 activations as the C++
    engine of that arch does it (llama.cpp, arch `bitnet`: always; bitnet.cpp: a single row only)."""
    n = NUMERICS.get(weight_type, "f32")
    if n == "f16" and (arch == "bitnet" or n_tokens == 1):
        return "f16-ggml"
    return n


@dataclass(frozen=True)
class Comparison:
    numerics: str  # the reference's activation/weight numerics: i2s, q8k, f32, f16 or "transformers"
    top1: float  # fraction of positions whose argmax agrees
    max_rel: float  # max |ours - ref| / max |ref|
    rms_rel: float  # ||ours - ref|| / ||ref||

    def line(self) -> str:
        return (f"{self.numerics:>12}: top-1 agreement {100 * self.top1:.1f}%, max relative error "
                f"{self.max_rel:.2e}, rms relative error {self.rms_rel:.2e}")


def compare(ours: np.ndarray, ref: np.ndarray, numerics: str) -> Comparison:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    return Comparison(numerics, float((ours.argmax(-1) == ref.argmax(-1)).mean()),
                      float(np.abs(ours - ref).max() / np.abs(ref).max()),
                      float(np.linalg.norm(ours - ref) / np.linalg.norm(ref)))


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
        from transformers.integrations import bitnet  # noqa: F401
    except ImportError as e:
        raise VerifyError(f"--verify needs torch and transformers ({e.name} is missing): "
                          "pip install 'bitnet[convert]'") from None
    torch._dynamo.config.disable = True  # transformers' BitNet ops are torch.compile'd; eager is exact and quick
    return torch


def load_reference(folder: str | Path, cfg: HFConfig | None = None):
    """transformers' model for the checkpoint, in float32, eval mode."""
    torch = _torch()
    from transformers import AutoModelForCausalLM

    cfg = cfg or read_config(folder)
    if cfg.family == "transformers-bitnet":
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        # an offline bf16 checkpoint can come back with bf16 unpacked weights despite dtype=float32, and
        # transformers refuses .float() on a quantized model: cast tensor by tensor
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point() and t.dtype != torch.float32:
                t.data = t.data.float()
        return model
    return _load_1bitllm(folder, cfg, torch)


def _load_1bitllm(folder, cfg: HFConfig, torch):
    from safetensors.torch import load_file
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import replace_with_bitnet_linear
    from transformers.utils.quantization_config import BitNetQuantConfig

    from bitnet_models.convert.safetensors import Checkpoint

    tc = BitNetConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden, intermediate_size=cfg.ffn,
                      num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                      num_key_value_heads=cfg.kv_heads, hidden_act=cfg.act, max_position_embeddings=cfg.ctx,
                      rms_norm_eps=cfg.eps, tie_word_embeddings=cfg.tied, rope_theta=cfg.rope_theta,
                      bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=None)
    tc.rope_parameters = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    model = BitNetForCausalLM(tc)
    qc = BitNetQuantConfig(linear_class="autobitlinear", quantization_mode="online")
    model = replace_with_bitnet_linear(model, modules_to_not_convert=["lm_head"], quantization_config=qc)
    rename = {".self_attn.inner_attn_ln.": ".self_attn.attn_sub_norm.", ".mlp.ffn_layernorm.": ".mlp.ffn_sub_norm."}
    state = {}
    for shard in sorted({e.path for e in Checkpoint(folder).entries.values()}):
        for k, v in load_file(str(shard)).items():
            for a, b in rename.items():
                k = k.replace(a, b)
            state[k] = v.float()
    if cfg.tied:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tied:
        model.tie_weights()
    return model.float().eval()


@contextlib.contextmanager
def reference_numerics(model, numerics: str, round_head_f16: bool = False):
    """Make transformers' BitLinear layers compute as the engine does for a GGUF weight type (see module doc)."""
    torch = _torch()
    from transformers.integrations import bitnet as tb

    from bitnet_quantization import quantize_q8_k

    saved = (tb.ActQuant, tb.WeightQuant)
    scales = []
    hooks = []

    class Identity:
        @staticmethod
        def apply(x):
            return x

    class F16Act:  # ggml's F16 matmul converts the activations to F16 (its vec_dot_type)
        @staticmethod
        def apply(x):
            return x.half().to(x.dtype)

    class Q8KAct:
        @staticmethod
        def apply(x):
            shape = x.shape
            a = quantize_q8_k(x.detach().reshape(-1, shape[-1]).float().numpy())
            nb = a.d.shape[1]
            deq = a.q.reshape(-1, nb, 256).astype(np.float32) * a.d[..., None]
            return torch.from_numpy(deq.reshape(shape)).to(x.dtype)

    def weight_quant(w, f16_scale: bool):
        # transformers' WeightQuant with mean|W| summed in float64 and rounded once: torch's float32 sum order
        # depends on the machine, and for ~1 weight in a few million W*s lands within an ulp of +-0.5, so the
        # summation order decides its ternary value (the converter uses the correctly rounded mean)
        wf = w.float()
        s = 1.0 / wf.abs().double().mean().float().clamp(min=1e-5)
        q = (wf * s).round().clamp(-1, 1)
        scale = (1.0 / s).half().float() if f16_scale else 1.0 / s
        return (q * scale if f16_scale else q / s).to(w.dtype)

    class WeightExactMean:
        @staticmethod
        def apply(w):
            return weight_quant(w, False)

    class WeightF16Scale:  # W_q = q * fp16(1/s): the TQ block scale d, or F16's rounding of q * scale
        @staticmethod
        def apply(w):
            return weight_quant(w, True)

    try:
        tb.WeightQuant = WeightExactMean
        if numerics in ("f32", "f16"):
            tb.ActQuant = Identity
        elif numerics == "f16-ggml":
            tb.ActQuant = F16Act
        elif numerics == "q8k":
            tb.ActQuant = Q8KAct
        if numerics in ("q8k", "f16", "f16-ggml"):
            tb.WeightQuant = WeightF16Scale
            for m in model.modules():  # offline layers: W = q * weight_scale
                if isinstance(m, tb.AutoBitLinear) and not m.online_quant:
                    scales.append((m, m.weight_scale.detach().clone()))
                    m.weight_scale.data = m.weight_scale.data.half().float().to(m.weight_scale.dtype)
        if round_head_f16:  # llama.cpp's `bitnet` graph rounds the head's input to F16
            hooks.append(model.lm_head.register_forward_pre_hook(lambda mod, args: (args[0].half().float(),)))
        yield model
    finally:
        tb.ActQuant, tb.WeightQuant = saved
        for m, s in scales:
            m.weight_scale.data = s
        for h in hooks:
            h.remove()


def reference_logits(model, tokens: np.ndarray, numerics: str = "i2s", round_head_f16: bool = False) -> np.ndarray:
    torch = _torch()
    with reference_numerics(model, numerics, round_head_f16), torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens, np.int64))[None]).logits[0].float().numpy()


_GGUF_TO_MODULE = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                   "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                   "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                   "attn_sub_norm": "self_attn.attn_sub_norm", "ffn_sub_norm": "mlp.ffn_sub_norm"}


def effective_weight(module, gguf_type: str) -> np.ndarray:
    """The weight a transformers BitLinear layer computes with, as the GGUF type stores it (TQ: fp16 block
    scale; F16: rounded to F16)."""
    torch = _torch()
    from transformers.integrations import bitnet as tb

    f16 = gguf_type in ("TQ1_0", "TQ2_0", "F16")
    with torch.no_grad():
        if isinstance(module, tb.AutoBitLinear) and module.online_quant:
            wf = module.weight.float()
            s = 1.0 / wf.abs().double().mean().float().clamp(min=1e-5)
            q, scale = (wf * s).round().clamp(-1, 1), (1.0 / s)
        elif isinstance(module, tb.AutoBitLinear):
            q, scale = module.weight.float(), module.weight_scale.float().reshape(())
        elif isinstance(module, tb.BitLinear):
            q, scale = tb.unpack_weights(module.weight, dtype=torch.float32), 1.0 / module.weight_scale.float().reshape(())
        else:
            return module.weight.float().numpy()
        if f16:
            scale = scale.half().float()
        return (q * scale).numpy()


def weight_error(model, gguf_path) -> tuple[float, str]:
    """Largest relative difference between any GGUF tensor and what transformers computes with, and its name.
    Not chaotic: a correct conversion gives 0 up to one float rounding (~1e-7)."""
    from bitnet_models.gguf.reader import read_gguf

    worst, where = 0.0, ""
    with read_gguf(gguf_path) as f:
        for name, info in f.tensors.items():
            if name == "token_embd.weight":
                ref = model.model.embed_tokens.weight.detach().float().numpy()
            elif name == "output_norm.weight":
                ref = model.model.norm.weight.detach().float().numpy()
            elif name == "output.weight":
                ref = model.lm_head.weight.detach().float().numpy()
            else:
                _, layer, kind, _ = name.split(".")
                mod = model.model.layers[int(layer)].get_submodule(_GGUF_TO_MODULE[kind])
                ref = effective_weight(mod, info.qtype.name) if kind in MATRIX_KINDS else \
                    mod.weight.detach().float().numpy()
            if info.qtype.name == "F16":
                ref = ref.astype(np.float16).astype(np.float32)
            ours = f.dequantize(name).reshape(ref.shape)
            err = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))
            if err > worst:
                worst, where = err, name
    return worst, where


MATRIX_KINDS = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}


@dataclass(frozen=True)
class Report:
    matched: Comparison  # logits vs the reference with the engine's numerics for the file's weight type
    plain: Comparison  # logits vs transformers as it is
    layers: list[float]  # rms relative error of each layer's output (all but the last, which transformers norms)
    quantized_activations: bool  # I2_S/TQ: int8 activation rounding makes differences grow layer by layer
    weights: float  # largest relative difference of any tensor from the weights transformers computes with
    weights_at: str  # ... and which tensor

    @property
    def ok(self) -> bool:
        """Every tensor equal to what transformers computes with (up to one float rounding), and logits that
        agree: at float rounding where activations are floats; with quantized activations within the drift
        that int8 rounding flips cause (spec 5b: a 1e-7 difference flips a rounding now and then, and each flip
        propagates), far below the order-1 error of a wrong tensor, packing or scale."""
        if self.weights > 1e-6:
            return False
        if not self.quantized_activations:
            return self.matched.top1 == 1.0 and self.matched.rms_rel < 1e-3 and max(self.layers, default=0) < 1e-3
        return self.matched.top1 >= 0.75 and self.matched.rms_rel < 0.1 and max(self.layers, default=0) < 0.1

    def lines(self) -> list[str]:
        out = [f"{'weights':>12}: largest relative difference from transformers' effective weights "
               f"{self.weights:.1e} ({self.weights_at or 'none'})", self.matched.line(), self.plain.line()]
        if self.layers:
            out.append(f"{'per layer':>12}: rms relative error of each layer's output: "
                       + " ".join(f"{x:.1e}" for x in self.layers))
        if self.quantized_activations:
            out.append(f"{'':>12}  (int8 activations: a 1e-7 float difference flips an activation rounding now "
                       "and then, so logit differences grow with depth; the weights line is the exact check)")
        return out


def verify(hf_dir: str | Path, gguf_path: str | Path, n_tokens: int = 8, seed: int = 0) -> Report:
    """Compare the converted file with transformers on `n_tokens` random token ids, logits and layer by layer."""
    try:
        from bitnet_inference import Model
    except ImportError:
        raise VerifyError("--verify runs the converted file with bitnet-inference: pip install 'bitnet[inference]'") \
            from None
    from bitnet_models.gguf.reader import read_gguf

    torch = _torch()
    cfg = read_config(hf_dir)
    with read_gguf(gguf_path) as f:
        arch = f.architecture
        wtype = f.tensors["blk.0.attn_q.weight"].qtype.name
        head = f.tensors.get("output.weight", f.tensors["token_embd.weight"]).qtype.name
        n_vocab = f.tensors["token_embd.weight"].shape[0]
    tokens = np.random.default_rng(seed).integers(0, min(n_vocab, cfg.vocab), n_tokens)
    caps: dict[int, np.ndarray] = {}

    def capture(name, layer, a):
        if name == "layer_out":
            caps[layer] = np.array(a, np.float64)

    ours = Model(gguf_path, numerics="fast", kv_type="f32").forward(tokens, 0, capture=capture)
    model = load_reference(hf_dir, cfg)
    numerics = matched_numerics(arch, wtype, n_tokens)
    round_head = arch == "bitnet" and head == "F16"
    with reference_numerics(model, numerics, round_head), torch.no_grad():
        out = model(torch.as_tensor(tokens)[None], output_hidden_states=True)
    ref = out.logits[0].float().numpy()
    hidden = [h[0].double().numpy() for h in out.hidden_states[1:-1]]  # layer outputs; the last one is normed
    layers = [float(np.linalg.norm(caps[i] - h) / np.linalg.norm(h)) for i, h in enumerate(hidden)]
    worst, where = weight_error(model, gguf_path)
    return Report(compare(ours, ref, numerics), compare(ours, reference_logits(model, tokens, "i2s"), "transformers"),
                  layers, numerics in ("i2s", "q8k"), worst, where)
