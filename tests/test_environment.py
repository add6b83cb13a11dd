"""environment.yml (conda) and pyproject.toml (pip) must pin the same packages at the same versions."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _pins(specs):
    pins = {}
    for spec in specs:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)\s*", spec)
        assert m, f"not pinned exactly: {spec!r}"
        pins[m[1].lower().replace("_", "-")] = m[2]
    return pins


def pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return _pins(project["dependencies"] + project["optional-dependencies"]["dev"])


def environment_pins():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return _pins([s for s in pip_section if not s.startswith("-e")])


def test_environment_and_pyproject_pin_the_same_set():
    assert pyproject_pins() == environment_pins()


def test_environment_uses_python_311():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]


def test_pin_parser_rejects_ranges():
    import pytest

    with pytest.raises(AssertionError):
        _pins(["numpy>=2"])
