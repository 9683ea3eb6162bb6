"""The declared dependency floors: every runtime requirement of pyproject.toml pinned to its `>=` bound.

`python tests/dependency_floors.py` prints them as a pip constraints file (`make test-min` installs
with it); `tests/test_dependency_floors.py` checks, inside that environment, that they are what got
installed. torch is left out: its floor cannot be installed here (see docs/architecture.md, "Dependency floors").
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
UNPINNED = {"torch"}  # installed first, from TORCH_PIN


def dependency_floors(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """{distribution name: its lowest allowed version} for the `dependencies` that declare one."""
    import tomllib  # Python 3.11+; the floors environment is built on this machine's 3.11

    floors = {}
    for requirement in tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]:
        match = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(.*)", requirement)
        assert match, requirement
        name, spec = match[1], match[2]
        floor = re.search(r">=\s*([0-9][^,;\s]*)", spec)
        if floor and name not in UNPINNED:
            floors[name] = floor[1]
    return floors


if __name__ == "__main__":
    sys.stdout.write("".join(f"{name}=={version}\n" for name, version in dependency_floors().items()))
