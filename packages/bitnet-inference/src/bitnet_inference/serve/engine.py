"""Continuous batching: one engine thread decodes every active sequence in one step.

Each sequence owns a KV-cache slot. Between decode steps the engine admits waiting requests into free slots
(prefilling each prompt with `Model.prefill(slot=...)`), then runs `Model.forward_batch` over all active
sequences (every matmul over the batch: the weights are read once per step), samples each sequence's next
token with its own sampler, and drops finished or cancelled sequences, which frees their slots.

The waiting queue is bounded: `submit` raises `QueueFullError` when it is full (the server answers 503).
Results go back through a callback the engine thread calls with `Event`s; the server wraps it with
`loop.call_soon_threadsafe`, so nothing here knows about asyncio.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from bitnet_inference.errors import EngineError
from bitnet_inference.sampling import LogitsProcessor, Sampler

log = logging.getLogger(__name__)


class QueueFullError(EngineError):
    """Every slot is busy and the waiting queue is full: try again later."""


@dataclass
class Event:
    text: str  # new text since the previous event (never half a UTF-8 character, never part of a stop string)
    n_tokens: int  # tokens generated so far
    finish_reason: str | None = None  # None while generating; "stop", "length", "cancelled" or "error"
    error: str | None = None


@dataclass
class GenRequest:
    prompt: list[int]
    max_tokens: int
    sampler: Sampler
    emit: Callable[[Event], None]
    logits_processors: Sequence[LogitsProcessor] = ()
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Sequence:
    """A request in a slot: its tokens, its detokenizer and the stop-string hold-back."""

    def __init__(self, req: GenRequest, slot: int, tokenizer):
        from bitnet_tokenizers import IncrementalDetokenizer

        self.req = req
        self.slot = slot
        self.tokens = list(req.prompt)
        self.n_gen = 0
        self.detok = IncrementalDetokenizer(tokenizer)
        self.text = ""  # generated text so far
        self.sent = 0  # characters of self.text already emitted
        self.hold = max((len(s) for s in req.stop), default=1) - 1  # chars a stop string could still be completing

    def add_text(self, piece: str) -> str | None:
        """Append new text; return 'stop' when a stop string appears (the text is cut before it)."""
        self.text += piece
        start = max(0, self.sent - self.hold)
        cut = None
        for s in self.req.stop:
            at = self.text.find(s, start)
            if at >= 0 and (cut is None or at < cut):
                cut = at
        if cut is not None:
            self.text = self.text[:cut]
            return "stop"
        return None

    def pending_text(self, final: bool) -> str:
        end = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        out = self.text[self.sent : end]
        self.sent = end
        return out


class Engine:
    """Owns the model: `submit(GenRequest)` queues a request; `start()` runs the engine thread."""

    def __init__(self, model, tokenizer, n_parallel: int = 4, queue_size: int = 64):
        if n_parallel < 1:
            raise EngineError(f"--parallel must be >= 1, got {n_parallel}")
        if queue_size < 0:
            raise EngineError(f"--queue-size must be >= 0, got {queue_size}")
        if model.cache.n_slots < n_parallel:
            raise EngineError(f"the model has {model.cache.n_slots} KV-cache slots but --parallel is {n_parallel}; "
                              f"load it with Model(..., n_slots={n_parallel})")
        self.model = model
        self.tokenizer = tokenizer
        self.n_parallel = n_parallel
        self.queue_size = queue_size
        self.n_ctx = model.n_ctx
        self._waiting: deque[GenRequest] = deque()
        self._active: dict[int, _Sequence] = {}
        self._free = list(range(n_parallel))
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and stats)
        self.max_batch = 0  # the largest batch a step has run
        self.decode_tokens = 0  # tokens produced by decode steps, and the seconds those steps took
        self.decode_s = 0.0
        self.prefill_tokens = 0
        self.prefill_s = 0.0

    # --- the server's side ------------------------------------------------------------------------------------

    def submit(self, req: GenRequest) -> None:
        if not req.prompt:
            raise EngineError("the prompt is empty")
        if len(req.prompt) >= self.n_ctx:
            raise EngineError(f"the prompt has {len(req.prompt)} tokens but the context holds {self.n_ctx}")
        with self._cv:
            busy = len(self._active) + len(self._waiting)
            if busy >= self.n_parallel + self.queue_size:
                raise QueueFullError(f"the server is busy ({self.n_parallel} slots, {self.queue_size} waiting)")
            self._waiting.append(req)
            self._cv.notify()

    def load(self) -> dict:
        with self._cv:
            return {"active": len(self._active), "waiting": len(self._waiting), "slots": self.n_parallel,
                    "queue_size": self.queue_size}

    def stats(self) -> dict:
        return {"decode_steps": self.steps, "max_batch": self.max_batch, "decode_tokens": self.decode_tokens,
                "decode_s": round(self.decode_s, 6), "prefill_tokens": self.prefill_tokens,
                "prefill_s": round(self.prefill_s, 6)}

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="bitnet-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the engine thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._active:
                    self._cv.wait()
                if self._stop:
                    break
                admitted = []
                while self._waiting and self._free:
                    admitted.append((self._waiting.popleft(), self._free.pop()))
            for req, slot in admitted:
                seq = _Sequence(req, slot, self.tokenizer)
                with self._cv:
                    self._active[slot] = seq
                try:
                    self._admit(seq)
                except Exception as e:  # this request fails; the others go on
                    log.exception("prefill failed")
                    self._finish(seq, "error", error=f"{type(e).__name__}: {e}")
            self._drop_cancelled()
            try:
                if self._active:
                    self._step()
            except Exception as e:  # a bug must not leave clients waiting forever
                log.exception("decode step failed")
                for seq in list(self._active.values()):
                    self._finish(seq, "error", error=f"{type(e).__name__}: {e}")
        with self._cv:
            leftovers = list(self._active.values())
            waiting = list(self._waiting)
            self._waiting.clear()
        for seq in leftovers:
            self._finish(seq, "cancelled")
        for req in waiting:
            req.emit(Event("", 0, "cancelled"))

    def _admit(self, seq: _Sequence) -> None:
        if seq.req.cancelled.is_set():
            self._finish(seq, "cancelled")
            return
        t0 = time.perf_counter()
        logits = self.model.prefill(seq.req.prompt, 0, slot=seq.slot)
        self.prefill_s += time.perf_counter() - t0
        self.prefill_tokens += len(seq.req.prompt)
        self._accept(seq, logits)

    def _drop_cancelled(self) -> None:
        for seq in list(self._active.values()):
            if seq.req.cancelled.is_set():
                self._finish(seq, "cancelled")

    def _step(self) -> None:
        seqs = list(self._active.values())
        tokens = np.array([s.tokens[-1] for s in seqs], dtype=np.int64)
        positions = np.array([len(s.tokens) - 1 for s in seqs], dtype=np.int64)
        slots = np.array([s.slot for s in seqs], dtype=np.int64)
        t0 = time.perf_counter()
        logits = self.model.forward_batch(tokens, positions, slots)  # (B, V)
        self.decode_s += time.perf_counter() - t0
        self.decode_tokens += len(seqs)
        self.steps += 1
        self.max_batch = max(self.max_batch, len(seqs))
        for seq, row in zip(seqs, logits):
            try:
                self._accept(seq, row)
            except Exception as e:  # one request's sampling failed: the others go on
                log.exception("sampling failed")
                self._finish(seq, "error", error=f"{type(e).__name__}: {e}")

    def _accept(self, seq: _Sequence, logits: np.ndarray) -> None:
        """Sample the next token of `seq` from its logits and emit what it completes."""
        req = seq.req
        for proc in req.logits_processors:
            logits = proc(seq.tokens, logits)
        tok = int(req.sampler(logits))
        seq.n_gen += 1
        if self.tokenizer.is_eog(tok) and not req.ignore_eos:
            seq.add_text(seq.detok.flush())
            self._finish(seq, "stop")
            return
        seq.tokens.append(tok)
        finish = seq.add_text(seq.detok.add(tok))
        if finish is None and (seq.n_gen >= req.max_tokens or len(seq.tokens) >= self.n_ctx):
            finish = seq.add_text(seq.detok.flush()) or "length"
        if finish:
            self._finish(seq, finish)
            return
        text = seq.pending_text(False)
        req.emit(Event(text, seq.n_gen))

    def _finish(self, seq: _Sequence, reason: str, error: str | None = None) -> None:
        with self._cv:
            if self._active.get(seq.slot) is not seq:
                return
            del self._active[seq.slot]
            self._free.append(seq.slot)
        text = "" if reason in ("cancelled", "error") else seq.pending_text(True)
        seq.req.emit(Event(text, seq.n_gen, reason, error))


def wait_idle(engine: Engine, timeout: float = 10.0) -> bool:
    """For tests: wait until no request is active or waiting."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        s = engine.load()
        if s["active"] == 0 and s["waiting"] == 0:
            return True
        time.sleep(0.01)
    return False
