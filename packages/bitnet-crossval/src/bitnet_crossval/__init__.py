"""bitnet-crossval."""
