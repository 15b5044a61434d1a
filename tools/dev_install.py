"""Install workspace packages editable into the current environment, with their third-party dependencies.

Used by the hatch environments (hatch.toml). The packages refer to each other by direct `file:` references,
which pip will not mix with editable installs of the same packages; so every workspace package is installed
editable with --no-deps, and the third-party requirements are read from the pyproject files (the single source
of truth) and installed in one pip call.

    python tools/dev_install.py '.[serve]' packages/bitnet-models[download] packages/bitnet-kernels ...
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = re.compile(r"^(?P<path>[^\[]+)(\[(?P<extras>[^\]]*)\])?$")


def requirements(path: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads((path / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in project.get("optional-dependencies", {}):
            sys.exit(f"dev_install: {path.name} has no extra {extra!r}")
        reqs += project["optional-dependencies"][extra]
    return [r for r in reqs if not re.match(r"^\s*bitnet(-[a-z]+)?\b", r)]


def installed_editable(path: Path) -> bool:
    """Already installed editable from this very checkout (then a rerun installs nothing)."""
    name = tomllib.loads((path / "pyproject.toml").read_text())["project"]["name"]
    try:
        raw = metadata.distribution(name).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return False
    info = json.loads(raw or "{}")
    return info.get("dir_info", {}).get("editable", False) and info.get("url") == path.as_uri()


def main(specs: list[str]) -> int:
    paths, third_party = [], []
    for spec in specs:
        m = SPEC.match(spec.strip())
        if not m:
            sys.exit(f"dev_install: cannot parse {spec!r}")
        path = (ROOT / m["path"]).resolve()
        extras = [e.strip() for e in (m["extras"] or "").split(",") if e.strip()]
        paths.append(path)
        third_party += requirements(path, extras)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if third_party:
        subprocess.run(pip + sorted(set(third_party)), check=True)
    editable = [a for p in paths if not installed_editable(p) for a in ("-e", str(p))]
    if editable:
        subprocess.run(pip + ["--no-deps", "--no-build-isolation"] + editable, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
