"""Build llama-cpp-python's wheel once into the wheel cache (PIP_FIND_LINKS), so every hatch environment
that needs the C++ reference installs it in seconds instead of compiling llama.cpp again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PIN = "llama-cpp-python==0.3.36"


def main() -> int:
    cache = Path(os.environ.get("PIP_FIND_LINKS") or Path.home() / ".cache" / "bitnet-py" / "wheels")
    cache.mkdir(parents=True, exist_ok=True)
    if list(cache.glob("llama_cpp_python-0.3.36-*.whl")):
        print(f"wheel cache: {PIN} already built in {cache}")
        return 0
    print(f"wheel cache: building {PIN} from source into {cache} (compiles llama.cpp; several minutes)", flush=True)
    return subprocess.call([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(cache), PIN])


if __name__ == "__main__":
    sys.exit(main())
