"""In the environment `make test-min` builds, every runtime dependency is at its declared floor."""

from __future__ import annotations

import os
from importlib.metadata import version

import pytest
from dependency_floors import dependency_floors
from packaging.version import Version


@pytest.mark.skipif(os.environ.get("TUNERY_TEST_FLOORS") != "1", reason="only in the floors environment (make test-min)")
def test_installed_versions_are_the_declared_floors():
    floors = dependency_floors()
    assert floors, "pyproject.toml declares no floors"
    wrong = {name: (version(name), floor) for name, floor in floors.items() if Version(version(name)) != Version(floor)}
    assert not wrong, f"installed (version, floor): {wrong}"
