"""Export a checkpoint of tools/train_tiny.py to GGUF through `bitnet convert` (issues 7 and 8).

    python tools/export_tiny.py --checkpoint RUN.part0.pt --spm DATA/spm.model --qtype I2_S --out FILE.gguf

The layer matrices are ternarized exactly as the training forward pass does (absmean: q = clamp(round(W / mean|W|),
-1, 1), per-tensor scale mean|W|) and written as a transformers BitNet checkpoint in the `offline` form (2-bit
packed + weight_scale, so these exact ternary values survive), with the SentencePiece model as tokenizer.model;
then the project's converter makes the GGUF: I2_S (per-tensor f32 scale), TQ2_0 (per-256 fp16 scale) or F16
(q * scale), embedding F16, norms F32, the vocabulary in the metadata the way llama.cpp's `llama` tokenizer reads it.
`--direct` writes the same file without the converter (the original path, kept to check the two agree).

A checkpoint trained with `--act relu2` is arch `bitnet-b1.58`; one trained with `--act silu` is arch `bitnet`
(llama.cpp's, which always uses a SiLU FFN), so llama-cpp-python can load it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bitnet_models import RawTensor, write_gguf
from bitnet_quantization import absmean_ternarize, i2s_pack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny import load_checkpoint  # noqa: E402

# llama.cpp token types and file types
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
FILE_TYPE = {"F16": 1, "TQ2_0": 37, "I2_S": 40}
ARCH = {"relu2": "bitnet-b1.58", "silu": "bitnet"}
# checkpoint name -> GGUF name, per block
LAYER_TENSORS = (
    ("attn_norm", "attn_norm"), ("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("attn_sub_norm", "attn_sub_norm"),
    ("o", "attn_output"), ("ffn_norm", "ffn_norm"), ("gate", "ffn_gate"), ("up", "ffn_up"),
    ("ffn_sub_norm", "ffn_sub_norm"), ("down", "ffn_down"),
)
TERNARY = {"q", "k", "v", "o", "gate", "up", "down"}


def vocab_metadata(spm_path: Path) -> dict:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    scores = np.array([sp.get_score(i) for i in range(n)], np.float32)
    types = np.array([UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else BYTE if sp.is_byte(i)
                      else NORMAL for i in range(n)], np.int32)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": True,
    }


def model_metadata(cfg: dict, arch: str, qtype: str, name: str) -> dict:
    a = arch
    return {
        "general.name": name,
        "general.description": ("bitnet-py's tiny BitNet b1.58 (quantization-aware trained on Shakespeare and the "
                                "King James Bible; tools/train_tiny.py)"),
        "general.license": "MIT",
        "general.file_type": FILE_TYPE[qtype],
        f"{a}.vocab_size": cfg["vocab"],
        f"{a}.context_length": cfg["ctx"],
        f"{a}.embedding_length": cfg["hidden"],
        f"{a}.block_count": cfg["layers"],
        f"{a}.feed_forward_length": cfg["ffn"],
        f"{a}.rope.dimension_count": cfg["hidden"] // cfg["heads"],
        f"{a}.attention.head_count": cfg["heads"],
        f"{a}.attention.head_count_kv": cfg["kv_heads"],
        f"{a}.attention.layer_norm_rms_epsilon": float(cfg["eps"]),
        f"{a}.rope.freq_base": float(cfg["rope_base"]),
    }


def ternary_tensor(w: np.ndarray, qtype: str):
    from bitnet_quantization import tq2_0_encode

    q, scale = absmean_ternarize(w)
    if qtype == "I2_S":
        return RawTensor(i2s_pack(q, float(scale)), w.shape)
    if qtype == "TQ2_0":
        return RawTensor(tq2_0_encode(q.astype(np.float32) * scale), w.shape)
    return q.astype(np.float32) * scale  # F16: the writer rounds the ternary weights times their scale


def export(checkpoint: Path, spm_path: Path, qtype: str, out: Path, name: str | None = None) -> Path:
    """Checkpoint -> offline transformers BitNet folder -> `convert` -> GGUF."""
    import json
    import shutil
    import tempfile

    from bitnet_models.convert import convert
    from bitnet_models.convert.export import PROJ, hf_config, save_offline_checkpoint

    cfg, state = load_checkpoint(checkpoint)
    sd = {k: v.float().numpy() for k, v in state.items()}
    gguf_name = dict(LAYER_TENSORS)
    layers = []
    for i in range(cfg["layers"]):
        layer = {}
        for src, dst in LAYER_TENSORS:
            w = sd[f"blocks.{i}.{src}.weight"]
            layer[dst] = absmean_ternarize(w) if src in TERNARY else w
        layers.append(layer)
    assert set(PROJ) == {gguf_name[t] for t in TERNARY}
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    config = hf_config(hidden=cfg["hidden"], layers=cfg["layers"], heads=cfg["heads"], kv_heads=cfg["kv_heads"],
                       ffn=cfg["ffn"], vocab=cfg["vocab"], ctx=cfg["ctx"], rope_theta=float(cfg["rope_base"]),
                       eps=float(cfg["eps"]), act=cfg["act"], bos=sp.bos_id(), eos=sp.eos_id())
    with tempfile.TemporaryDirectory(prefix="tiny-hf-") as tmp:
        folder = save_offline_checkpoint(tmp, config, sd["embed.weight"], sd["norm.weight"], layers)
        shutil.copy(spm_path, folder / "tokenizer.model")
        (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False}))
        return convert(folder, out, qtype.lower(), name=name or out.stem).path


def export_direct(checkpoint: Path, spm_path: Path, qtype: str, out: Path, name: str | None = None) -> Path:
    cfg, state = load_checkpoint(checkpoint)
    arch = ARCH[cfg["act"]]
    sd = {k: v.float().numpy() for k, v in state.items()}
    tensors: list[tuple[str, object, str]] = [
        ("token_embd.weight", sd["embed.weight"].astype(np.float16), "F16"),
        ("output_norm.weight", sd["norm.weight"], "F32"),
    ]
    for i in range(cfg["layers"]):
        for src, dst in LAYER_TENSORS:
            w = sd[f"blocks.{i}.{src}.weight"]
            if src in TERNARY:
                tensors.append((f"blk.{i}.{dst}.weight", ternary_tensor(w, qtype), qtype))
            else:
                tensors.append((f"blk.{i}.{dst}.weight", w, "F32"))
    name = name or out.stem
    metadata = model_metadata(cfg, arch, qtype, name) | vocab_metadata(spm_path)
    return write_gguf(out, arch, metadata, tensors)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="any .partN.pt file written by train_tiny.py")
    p.add_argument("--spm", required=True, help="the spm.model written by `train_tiny.py tokenizer`")
    p.add_argument("--qtype", choices=sorted(FILE_TYPE), default="I2_S")
    p.add_argument("--out", required=True)
    p.add_argument("--name", help="general.name (default: the output file's stem)")
    p.add_argument("--direct", action="store_true", help="write with the GGUF writer directly, not via convert")
    args = p.parse_args(argv)
    fn = export_direct if args.direct else export
    path = fn(Path(args.checkpoint), Path(args.spm), args.qtype, Path(args.out), args.name)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
