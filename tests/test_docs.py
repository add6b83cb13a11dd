"""The README's commands are the ones that work: CI's command, runner parameters, CLI commands."""

from __future__ import annotations

import re

from fer_utils import parameters, workfolder
from fer_utils.workfolder import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def _ci_test_command() -> str:
    lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    marker = next(i for i, line in enumerate(lines) if "--- the README's test command" in line)
    return lines[marker + 1].strip()


def test_readme_shows_the_command_ci_runs():
    assert _ci_test_command() in README


def test_every_runner_parameter_in_the_readme_is_declared_by_a_notebook():
    declared = {name for nb in workfolder.numbered_notebooks() for name in parameters.declared_parameters(nb)}
    used = set(re.findall(r"-p ([a-z_]+) ", README))
    assert used, "the README shows no -p example"
    assert used <= declared, f"README uses undeclared parameters: {sorted(used - declared)}"


def test_every_fer_utils_command_in_the_readme_exists():
    from fer_utils import __main__

    commands = set(re.findall(r"python -m fer_utils (\w+)", README))
    assert {"run", "predict"} <= commands
    for command in commands:
        assert f"\n  {command} " in __main__.USAGE, f"README shows `python -m fer_utils {command}`: no such command"


def test_readme_links_to_files_that_exist():
    for target in re.findall(r"\]\(((?!https?://)[^)#]+)\)", README):
        assert (REPO_ROOT / target).exists(), f"README links to a missing file: {target}"
