"""bitnet-tokenizers."""
