"""Repository-wide pytest configuration.

Test modules of the full tier that import its heavy extras (torch, transformers) at module level are not even
collected when the run's marker expression leaves the full tier out (the fast and standard environments do not
install those extras). A plain `pytest` or `-m full` collects them, and a missing extra is then an error, as it
must be.
"""

from pathlib import Path

FULL_TIER_MODULES = {"test_convert_transformers.py"}


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.name in FULL_TIER_MODULES:
        markexpr = config.getoption("markexpr") or ""
        if markexpr and "full" not in markexpr:
            return True
    return None
