"""BitNet b1.58 inference: load a GGUF model and generate, evaluate perplexity, or compare with bitnet.cpp."""

from bitnet_inference.errors import ContextOverflowError, EngineError
from bitnet_inference.generate import GenerationResponse, Model, generate, generate_step, load, stream_generate
from bitnet_inference.sampling import make_logits_processors, make_sampler

__all__ = [
    "ContextOverflowError",
    "EngineError",
    "GenerationResponse",
    "Model",
    "generate",
    "generate_step",
    "load",
    "make_logits_processors",
    "make_sampler",
    "stream_generate",
]
