"""ModelConfig: the model's hyper-parameters, built from GGUF metadata and the tensor index."""

from __future__ import annotations

from dataclasses import dataclass

from bitnet_models.errors import ModelConfigError
from bitnet_models.gguf.reader import GGUFFile

# arch string -> FFN activation (squared ReLU for Microsoft's b1.58 graph, SiLU for llama.cpp's `bitnet`)
SUPPORTED_ARCHS = {"bitnet-b1.58": "relu2", "bitnet-25": "relu2", "bitnet": "silu"}

LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
LAYER_NORMS = ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int
    head_dim: int
    n_rot: int
    rope_base: float
    norm_eps: float
    ffn_act: str  # "relu2" or "silu"
    tied_head: bool  # no output.weight: token_embd is also the LM head
    has_scales: bool  # arch `bitnet`: per-projection 1-element .scale tensors
    weight_type: str  # quant type of the layer matrices (I2_S, TQ2_0, TQ1_0, F32, F16, ...)

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "ModelConfig":
        md = f.metadata
        arch = f.architecture
        if arch is None:
            raise ModelConfigError(f"{f.path}: general.architecture is missing")
        if arch not in SUPPORTED_ARCHS:
            raise ModelConfigError(
                f"{f.path}: architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHS)}"
            )

        def get(key: str, default=None, kind=int):
            v = md.get(f"{arch}.{key}", default)
            if v is None:
                raise ModelConfigError(f"{f.path}: metadata key {arch}.{key} is missing")
            try:
                return kind(v)
            except (TypeError, ValueError):
                raise ModelConfigError(f"{f.path}: {arch}.{key} = {v!r} is not a {kind.__name__}") from None

        n_embd = get("embedding_length")
        n_head = get("attention.head_count")
        n_head_kv = get("attention.head_count_kv", n_head)
        if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv or n_embd % n_head:
            raise ModelConfigError(
                f"{f.path}: {n_head} heads / {n_head_kv} KV heads do not divide {n_embd} evenly"
            )
        head_dim = n_embd // n_head
        n_layer = get("block_count")
        if "token_embd.weight" not in f.tensors:
            raise ModelConfigError(f"{f.path}: tensor token_embd.weight is missing")
        emb = f.tensors["token_embd.weight"]
        if emb.shape[1] != n_embd:
            raise ModelConfigError(f"{f.path}: token_embd.weight has shape {emb.shape}, expected (vocab, {n_embd})")
        missing = [
            f"blk.{i}.{m}.weight"
            for i in range(n_layer)
            for m in LAYER_MATRICES + LAYER_NORMS
            if f"blk.{i}.{m}.weight" not in f.tensors
        ]
        if "output_norm.weight" not in f.tensors:
            missing.append("output_norm.weight")
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ModelConfigError(f"{f.path}: missing tensors {', '.join(missing[:5])}{more}")
        wtypes = {f.tensors[f"blk.{i}.{m}.weight"].qtype.name for i in range(n_layer) for m in LAYER_MATRICES}
        if len(wtypes) != 1:
            raise ModelConfigError(f"{f.path}: layer matrices mix quant types {sorted(wtypes)}; expected one")
        return cls(
            arch=arch,
            n_vocab=emb.shape[0],
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=n_head_kv,
            n_ff=get("feed_forward_length"),
            n_ctx_train=get("context_length", 4096),
            head_dim=head_dim,
            n_rot=get("rope.dimension_count", head_dim),
            rope_base=get("rope.freq_base", 10000.0, float),
            norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5, float),
            ffn_act=SUPPORTED_ARCHS[arch],
            tied_head="output.weight" not in f.tensors,
            has_scales=any(n.endswith(".scale") for n in f.tensors),
            weight_type=wtypes.pop(),
        )
