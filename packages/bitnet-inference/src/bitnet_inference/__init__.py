"""bitnet-inference."""
