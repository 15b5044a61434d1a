"""Repository invariants: CI runs exactly the README's test command."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_cmd = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if "hatch run" in l]
    assert len(ci_cmd) == 1
    assert ci_cmd[0].strip() in readme
