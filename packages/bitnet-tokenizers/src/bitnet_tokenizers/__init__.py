"""Tokenizers for BitNet GGUF files: the token ids llama.cpp produces.

    from bitnet_tokenizers import load_tokenizer
    tok = load_tokenizer(read_gguf(path))
    ids = tok.encode("Hello")            # BOS as the file asks
    text = tok.decode(ids)
"""

from bitnet_tokenizers.chat import BUILTIN_TEMPLATES, render_chat
from bitnet_tokenizers.detok import IncrementalDetokenizer
from bitnet_tokenizers.errors import TokenizerError
from bitnet_tokenizers.tokenizer import MockTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "BUILTIN_TEMPLATES",
    "IncrementalDetokenizer",
    "MockTokenizer",
    "Tokenizer",
    "TokenizerError",
    "load_tokenizer",
    "render_chat",
]
