"""bitnet: BitNet b1.58 inference in Python. The `bitnet` command lives in bitnet.cli."""

__version__ = "0.1.0"
