"""environment.yml (conda) and pyproject.toml (pip) must pin the same packages at the same versions."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
#: Extras for particular hardware: not in environment.yml (CPU) nor pulled in by dev.
HARDWARE_EXTRAS = {"gpu"}


def _pins(specs):
    pins = {}
    for spec in specs:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)\s*", spec)
        assert m, f"not pinned exactly: {spec!r}"
        pins[m[1].lower().replace("_", "-")] = m[2]
    return pins


def _self_extras(project, specs):
    """The project's own extras that ``specs`` pull in (``fer-notebooks[demo,site]``), and the other specs."""
    own = re.compile(rf"\s*{re.escape(project['name'])}\[([^\]]*)\]\s*", re.IGNORECASE)
    extras, rest = [], []
    for spec in specs:
        m = own.fullmatch(spec)
        if m:
            extras += [e.strip() for e in m[1].split(",")]
        else:
            rest.append(spec)
    return extras, rest


def pyproject_pins():
    """The pins of the dependencies and of every extra (environment.yml installs them all)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for name, group in project["optional-dependencies"].items():
        if name not in HARDWARE_EXTRAS:
            specs += _self_extras(project, group)[1]
    return _pins(specs)


def environment_pins():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return _pins([s for s in pip_section if not s.startswith("-e")])


def test_environment_and_pyproject_pin_the_same_set():
    assert pyproject_pins() == environment_pins()


def test_dev_extra_pulls_in_the_other_extras():
    """The README's install line (``-e ".[dev]"``) must bring what every test needs, the browser tests included."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pulled, _ = _self_extras(project, extras["dev"])
    assert set(pulled) == set(extras) - {"dev"} - HARDWARE_EXTRAS
    for name, group in extras.items():  # a self-reference names only extras that exist
        assert set(_self_extras(project, group)[0]) <= set(extras) - {name}


def test_gpu_extra_pins_the_same_tensorflow():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    cpu = _pins([d for d in project["dependencies"] if d.startswith("tensorflow")])["tensorflow"]
    assert project["optional-dependencies"]["gpu"] == [f"tensorflow[and-cuda]=={cpu}"]


def test_environment_uses_python_311():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]


def test_pin_parser_rejects_ranges():
    import pytest

    with pytest.raises(AssertionError):
        _pins(["numpy>=2"])


def test_progress_bars_need_ipywidgets_in_the_base_install():
    """tqdm.auto (notebook 01's download bar) is a widget in JupyterLab: without ipywidgets in the base install a
    learner gets "IProgress not found" and a text bar (tests/test_jupyterlab.py shows both on the page)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = _pins(project["dependencies"])
    assert {"ipywidgets", "tqdm", "jupyterlab"} <= set(base)


def test_every_test_has_a_timeout(pytestconfig):
    """pytest-timeout is installed and configured: a hung test fails after its timeout and shows where it hung."""
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) == 600 and pytestconfig.getini("timeout_method") == "thread"
