"""Notebook parameters: what each notebook's ``parameters`` cell declares, and ``-p NAME VALUE`` typed the way
papermill types it."""

from __future__ import annotations

import ast
from pathlib import Path


def repeated_parameters(pairs) -> str | None:
    """One line naming each ``-p NAME`` given more than once with different values (the last one would win
    without a word; ``3`` and ``03`` are one value), or None."""
    seen: dict[str, list[str]] = {}
    for name, value in pairs:
        seen.setdefault(name, []).append(value)
    twice = {n: v for n, v in seen.items() if len({repr(parse_value(x)) for x in v}) > 1}  # 3 and 3.0: one value
    if not twice:
        return None
    return ("; ".join(f"-p {n} is given {len(v)} times ({', '.join(v)})" for n, v in twice.items())
            + ": give each parameter once")


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


def kind_of(default) -> str | None:
    """What a value must be to replace ``default``: "an integer", "a number", "a string", "True or False",
    "a list", "a dict"; ``None`` when any value will do (a ``None`` default)."""
    if isinstance(default, bool):
        return "True or False"
    for kind, types in (("an integer", int), ("a number", float), ("a string", str), ("a list", (list, tuple)),
                        ("a dict", dict)):
        if isinstance(default, types):
            return kind
    return None


def fits(value, kind: str | None) -> bool:
    if kind is None:
        return True
    if kind == "True or False":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return {"an integer": isinstance(value, int), "a number": isinstance(value, (int, float)),
            "a string": isinstance(value, str), "a list": isinstance(value, (list, tuple)),
            "a dict": isinstance(value, dict)}[kind]


def check_values(params: dict, declared: dict[Path, dict]) -> list[str]:
    """One line per ``-p`` value whose type does not fit the default its notebook declares (``declared``:
    ``declared_parameters`` of each notebook to run); ``[]`` when all fit. A default that is an expression
    (not a literal) accepts any value."""
    problems = []
    for path, names in declared.items():
        for name, info in names.items():
            if name not in params:
                continue
            try:
                default = ast.literal_eval(info["default"])
            except (ValueError, SyntaxError):
                continue
            kind = kind_of(default)
            if not fits(params[name], kind):
                problems.append(f"-p {name} {params[name]!r}: {Path(path).name} declares {name} = {info['default']}, "
                                f"so the value must be {kind}")
    return problems


#: The smallest value each counting parameter outside ``TrainConfig`` takes (``TrainConfig`` checks its own), and
#: why, for the one-line refusal; ``None`` stays allowed where it is the default.
AT_LEAST = {"samples_per_emotion": (1, "faces shown per emotion"), "max_per_class": (1, "images kept per emotion"),
            "timing_epochs": (1, "epochs timed"), "n_boot": (1, "bootstrap resamples"),
            "eval_batch_size": (1, "faces per batch"), "n_gradcam": (0, "Grad-CAM examples"),
            "n_eval": (0, "faces timed"), "faces": (1, "generated faces"), "face_size": (8, "pixels"),
            "scale_epochs": (2, "epochs per strategy: the first fills the cache, the others are timed"),
            "per_replica_batch": (1, "faces per replica per step"), "logical_cpus": (1, "logical CPU devices")}


def check_ranges(params: dict, defaults: dict | None = None) -> list[str]:
    """One line per ``-p`` value out of range (``AT_LEAST``; ``test_size`` and ``val_size`` between 0 and 1,
    with room left for training, the one not given taken from ``defaults``: the notebooks' declared values),
    checked before any notebook starts; ``[]`` when all are in range."""
    problems = []
    for name, (least, what) in AT_LEAST.items():
        value = params.get(name)
        if name in params and value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            # a default that is an expression (08's faces reads $FER_SCALE_FACES) has no kind to check against
            problems.append(f"-p {name} {value!r}: must be a whole number of {what}, at least {least}")
        elif isinstance(value, int) and not isinstance(value, bool) and value < least:
            problems.append(f"-p {name} {value}: must be at least {least} ({what})")
    sizes = {k: params[k] for k in ("test_size", "val_size") if isinstance(params.get(k), (int, float))}
    for name, value in sizes.items():
        if not 0 < value < 1:
            problems.append(f"-p {name} {value}: must be a share between 0 and 1 (of the usable images)")
    given = [k for k in ("test_size", "val_size") if k in sizes]
    for k in ("test_size", "val_size"):  # the one not given: its declared default
        value = (defaults or {}).get(k)
        if given and k not in sizes and isinstance(value, (int, float)) and not isinstance(value, bool):
            sizes[k] = value
    if len(sizes) == 2 and all(0 < v < 1 for v in sizes.values()) and sum(sizes.values()) >= 1:
        said = " ".join(f"-p {k} {sizes[k]}" if k in given else f"with {k} {sizes[k]} (the default)"
                        for k in ("test_size", "val_size"))
        problems.append(f"{said}: together they must leave images to train on (their sum below 1)")
    return problems
