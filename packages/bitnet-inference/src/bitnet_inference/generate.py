"""Loading and generation, layered as mlx-lm does it:
generate_step (token ids) -> stream_generate (response records) -> generate (a string)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from bitnet_inference.args import ModelArgs
from bitnet_inference.errors import EngineError
from bitnet_inference.models import ARCHS
from bitnet_inference.numerics import get_numerics
from bitnet_inference.sampling import LogitsProcessor, Sampler, greedy
from bitnet_inference.weights import place_weights
from bitnet_models import ModelConfigError, read_gguf

PREFILL_BATCH = 512


class Model:
    """A loaded model: the GGUF file (memory-mapped), its args, and the transformer with its KV cache."""

    def __init__(self, path: str | Path, numerics: str = "fast", n_ctx: int | None = None, use_kernels: bool = True,
                 kv_type: str = "f16", n_slots: int = 1, lm_head: str = "f16", weights: str = "auto"):
        self.path = Path(path)
        self.gguf = read_gguf(self.path)
        try:
            self.args = ModelArgs.from_gguf(self.gguf)
        except ModelConfigError as e:
            raise EngineError(str(e)) from None
        arch = ARCHS.get(self.args.arch)
        if arch is None:
            raise EngineError(f"architecture {self.args.arch!r} has no engine module; supported: {', '.join(ARCHS)}")
        self.n_ctx = n_ctx or min(self.args.n_ctx_train, 4096)
        self.numerics = get_numerics(numerics, use_kernels)
        fast_kernels = self.numerics.name == "fast" and getattr(self.numerics, "bk", None) is not None
        # weights: "auto" (resident on huge pages with the fast kernels), "resident" or "mmap"; see weights.py
        self.weights = place_weights(self.gguf, weights, fast_kernels)
        self.net = arch.Model(self.weights, self.args, self.numerics, self.n_ctx, use_kernels=use_kernels, kv_type=kv_type,
                                 n_slots=n_slots, lm_head=lm_head)

    @property
    def cache(self):
        return self.net.cache

    def adopt_weights(self) -> None:
        """Point the transformer at the tensors the background copy has finished (weights.ResidentWeights) and
        drop the map's pages of them; every forward pass does this first (a no-op once the copy is over)."""
        take = getattr(self.weights, "take_new", None)
        if take is not None:
            names = take()
            if names:
                self.net.rebind_weights(self.weights, names)
                self.weights.unmap(names)

    def wait_for_weights(self, timeout: float | None = None) -> bool:
        """Block until the background copy of the weights is over, adopting tensors as they arrive (so the map's
        pages are dropped as they go, as decoding would); True when every large tensor is resident."""
        w = self.weights
        if not hasattr(w, "done"):
            return True
        w.release()
        end = None if timeout is None else time.monotonic() + timeout
        while not w.done.wait(0.05):
            self.adopt_weights()
            if end is not None and time.monotonic() > end:
                break
        self.adopt_weights()
        return w.done.is_set() and w.error is None

    def forward(self, tokens, pos0: int, logits: str = "all", capture=None, slot: int = 0) -> np.ndarray:
        self.adopt_weights()
        out = self.net.forward(tokens, pos0, logits=logits, capture=capture, slot=slot)
        self._release_copy()
        return out

    def _release_copy(self) -> None:
        release = getattr(self.weights, "release", None)
        if release is not None:
            release()  # the first pass is done: the background copy may start (weights.ResidentWeights)

    def forward_batch(self, tokens, positions, slots) -> np.ndarray:
        self.adopt_weights()
        out = self.net.forward_batch(tokens, positions, slots)
        self._release_copy()
        return out

    def prefill(self, tokens: Sequence[int], pos0: int = 0, slot: int = 0) -> np.ndarray:
        """Evaluate a prompt in batches; returns the last position's logits (V,)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        last = None
        for s in range(0, len(tokens), PREFILL_BATCH):
            last = self.forward(tokens[s : s + PREFILL_BATCH], pos0 + s, logits="last", slot=slot)
        return last[0]


def load(path: str | Path, numerics: str = "fast", n_ctx: int | None = None, tokenizer_path: str | None = None,
         use_kernels: bool = True):
    """Load a GGUF model and its tokenizer: `model, tokenizer = load("model.gguf")`."""
    from bitnet_tokenizers import load_tokenizer

    model = Model(path, numerics=numerics, n_ctx=n_ctx, use_kernels=use_kernels)
    return model, load_tokenizer(model.gguf, tokenizer_path)


def generate_step(model: Model, prompt: Sequence[int], sampler: Sampler = greedy,
                  logits_processors: Sequence[LogitsProcessor] = (), max_tokens: int = 256) -> Iterator[int]:
    """Yield sampled token ids one at a time; the caller decides when to stop. Greedy without logits processors
    on a model that streams greedy tokens from the device (the GPU model's greedy_stream: its argmax is the first
    index of the largest logit, as np.argmax) takes that path: no logits leave the device, and the steps run a
    little ahead of the caller. Top-k sampling on a model that returns only the rows whose logits may be among the
    k largest (the GPU model's sample_candidates) draws from those, the same draw as on the whole vector, also with
    one repeat penalty >= 1 as the logits processor (its rows and penalty go to the model, which picks the
    candidates of the penalized logits; the penalty is then applied to the candidates)."""
    if len(prompt) == 0:
        raise EngineError("the prompt is empty: give at least one token (or let the tokenizer add BOS)")
    if len(prompt) >= model.n_ctx:
        raise EngineError(f"the prompt has {len(prompt)} tokens but the context holds {model.n_ctx}; raise -c")
    on_device = sampler is greedy and not logits_processors and hasattr(model, "greedy_stream")
    # top-k sampling on a model that returns the possible top-k rows' logits only (with at most a repeat penalty)
    top_k = getattr(sampler, "top_k", 0)
    candidates = (0 < top_k <= 1024 and len(logits_processors) <= 1
                  and all(hasattr(p, "on_rows") for p in logits_processors)
                  and hasattr(sampler, "from_candidates") and hasattr(model, "sample_candidates"))
    tokens = list(prompt)
    model.cache.reset()
    logits = model.prefill(tokens)
    if candidates:
        if max_tokens <= 0:
            return
        for proc in logits_processors:
            logits = proc(tokens, logits)
        tok = sampler(logits)
        for i in range(max_tokens):
            yield tok
            tokens.append(tok)
            if len(tokens) >= model.n_ctx or i + 1 == max_tokens:
                return
            pen = [(p.recent(tokens), p.penalty) for p in logits_processors]
            rows, vals = model.sample_candidates(tok, len(tokens) - 1, top_k, *pen)
            for proc in logits_processors:
                vals = proc.on_rows(tokens, rows, vals)
            tok = sampler.from_candidates(rows, vals)
        return
    if on_device:
        if max_tokens <= 0:
            return
        tok = sampler(logits)
        yield tok
        tokens.append(tok)
        if len(tokens) < model.n_ctx:
            yield from model.greedy_stream(tok, len(tokens) - 1, min(max_tokens - 1, model.n_ctx - len(tokens)))
        return
    for _ in range(max_tokens):
        for proc in logits_processors:
            logits = proc(tokens, logits)
        tok = sampler(logits)
        yield tok
        tokens.append(tok)
        if len(tokens) >= model.n_ctx:
            return
        logits = model.forward([tok], len(tokens) - 1, logits="last")[0]


@dataclass
class GenerationResponse:
    text: str  # the new text since the previous response (never half a UTF-8 character)
    token: int
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    finish_reason: str | None  # None while generating, then "stop" (EOS/stop string) or "length"


def stream_generate(model: Model, tokenizer, prompt: str | Sequence[int], max_tokens: int = 256,
                    sampler: Sampler = greedy, logits_processors: Sequence[LogitsProcessor] = (),
                    stop: Sequence[str] = ()) -> Iterator[GenerationResponse]:
    from bitnet_tokenizers import IncrementalDetokenizer

    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    detok = IncrementalDetokenizer(tokenizer)
    t0 = time.perf_counter()
    t_first = None
    text_so_far = ""
    n = 0
    steps = generate_step(model, ids, sampler, logits_processors, max_tokens)
    for tok in steps:
        if t_first is None:
            t_first = time.perf_counter()
        n += 1
        now = time.perf_counter()
        prompt_tps = len(ids) / max(t_first - t0, 1e-9)
        gen_tps = (n - 1) / max(now - t_first, 1e-9) if n > 1 else 0.0
        if tokenizer.is_eog(tok):
            yield GenerationResponse(detok.flush(), tok, len(ids), prompt_tps, n, gen_tps, "stop")
            return
        piece = detok.add(tok)
        finish = None
        if stop and piece:
            text_so_far += piece
            for s in stop:
                at = text_so_far.find(s)
                if at >= 0:
                    keep = at - (len(text_so_far) - len(piece))
                    piece = piece[: max(keep, 0)]
                    finish = "stop"
                    break
        if finish is None and n >= max_tokens:
            piece += detok.flush()
            finish = "length"
        yield GenerationResponse(piece, tok, len(ids), prompt_tps, n, gen_tps, finish)
        if finish:
            return
    rest = detok.flush()
    yield GenerationResponse(rest, -1, len(ids), 0.0, n, 0.0, "length")


def generate(model: Model, tokenizer, prompt: str | Sequence[int], max_tokens: int = 256, **kwargs) -> str:
    return "".join(r.text for r in stream_generate(model, tokenizer, prompt, max_tokens, **kwargs))
