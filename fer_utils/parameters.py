"""Notebook parameters: what each notebook's ``parameters`` cell declares, and ``-p NAME VALUE`` typed the way
papermill types it."""

from __future__ import annotations

import ast
from pathlib import Path


def parse_value(text: str):
    """papermill's ``-p`` typing: int, float, True/False/None, a Python literal, else the string."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        value = ast.literal_eval(text)
        if isinstance(value, (list, tuple, dict)):
            return value
    except (ValueError, SyntaxError):
        pass
    return text


def declared_parameters(path: Path) -> dict:
    """The names and defaults of a notebook's ``parameters`` cell."""
    import papermill

    return papermill.inspect_notebook(str(path))
