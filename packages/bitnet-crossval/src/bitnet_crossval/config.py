"""What a cross-validation run compares and how close is close enough.

Config flows one way: the command layer (commands.settings_from_env) reads flags and the environment and builds
these frozen dataclasses; the library below never reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from bitnet_crossval.errors import CrossValError

REFERENCES = ("llama-cpp", "bitnet-cpp")


@dataclass(frozen=True)
class ToleranceConfig:
    """The ADR's four tolerances, plus the two that are not relative errors.

    Each check derives its threshold from one of them (docs/crossval.md has the table):
    logits relative error <= inference, cosine >= 1 - inference, max |diff| <= inference * max|ref| (+ the
    reference file's coding step); KLD mean <= quantization, p99 <= 10x, max <= 100x; |PPL ratio - 1| <=
    perplexity; our speed >= (1 - performance) x theirs; top-1 agreement >= top1; greedy tokens equal.
    """

    inference: float = 1e-4
    quantization: float = 1e-5
    perplexity: float = 1e-3
    performance: float = 0.05
    top1: float = 0.999

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and v >= 0 and v == v):
                raise CrossValError(f"tolerance {f.name}={v!r} must be a non-negative number")
        if self.top1 > 1:
            raise CrossValError(f"tolerance top1={self.top1} is a fraction of positions; give a value in 0..1")

    def with_spec(self, spec: str, source: str) -> "ToleranceConfig":
        """Apply `1e-4` (sets inference) or `inference=1e-4,perplexity=2e-3`; `source` names the flag or variable."""
        names = [f.name for f in fields(self)]
        spec = spec.strip()
        if not spec:
            return self
        updates: dict[str, float] = {}
        for part in spec.split(","):
            key, eq, value = part.partition("=")
            if not eq:
                key, value = "inference", key
            key = key.strip().replace("-", "_")
            if key not in names:
                raise CrossValError(f"{source}: unknown tolerance {key!r} in {spec!r}; known: {', '.join(names)}")
            try:
                updates[key] = float(value)
            except ValueError:
                raise CrossValError(f"{source}: {key}={value.strip()!r} is not a number (e.g. {key}=1e-4)") from None
        try:
            return replace(self, **updates)
        except CrossValError as e:
            raise CrossValError(f"{source}: {e}") from None


@dataclass(frozen=True)
class CrossValidationConfig:
    model: Path
    reference: str = "llama-cpp"
    text: Path | None = None  # None: the reference's recorded text, else the package's sample text
    numerics: str = "fast"
    n_ctx: int | None = None  # None: the recorded file's, else 128
    n_chunks: int = 4  # llama-cpp and live bitnet.cpp runs; a recorded file has its own
    ubatch: int | None = None  # None: a whole chunk per forward pass (llama-perplexity's default for -c <= 512)
    greedy_prompt: str = "To be, or not to be"
    greedy_tokens: int = 32
    threads: int | None = None
    bitnet_cpp_dir: Path | None = None  # a user's bitnet.cpp build; None: recorded outputs
    recorded_dir: Path | None = None  # recorded bitnet.cpp outputs; None: the model's own folder
    timeout_s: float = 600.0
    speed: bool = False
    fault: str | None = None  # a deliberately wrong engine setting (see faults.py), to show the checks catch it
    tolerances: ToleranceConfig = field(default_factory=ToleranceConfig)

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise CrossValError(f"unknown reference {self.reference!r}; choose one of: {', '.join(REFERENCES)}")
        from bitnet_inference.numerics import NUMERICS

        if self.numerics not in NUMERICS:
            raise CrossValError(f"unknown numerics {self.numerics!r}; choose one of: {', '.join(NUMERICS)}")
        for name in ("n_ctx", "ubatch", "threads"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise CrossValError(f"{name} must be positive, got {v}")
        if self.n_ctx is not None and self.n_ctx < 8:
            raise CrossValError(f"n_ctx {self.n_ctx} is too small to score anything; use at least 8 (default 128)")
        if self.n_chunks <= 0 or self.greedy_tokens < 0:
            raise CrossValError("n_chunks must be positive and greedy_tokens non-negative")
        if self.timeout_s <= 0:
            raise CrossValError(f"timeout must be positive, got {self.timeout_s}")
