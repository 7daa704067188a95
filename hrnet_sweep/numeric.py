"""A finite number of the declared type, whatever the source: a `key=value` override, a
YAML file (preset, sweep), a command-line flag, a sweep folder's own files.

One rule, so `lr=.inf`, `--weights nan` and `max: .inf` are refused alike. Python's
`float()` / `int()` and YAML 1.1 read more than a person means as a number: 'nan',
'inf', '1_000', '0x10', '1:30' (YAML: 90), non-ASCII digits ('١'), and a bool is an int
to Python. None of those is a number here: a number is a plain ASCII decimal
(`3`, `-2`, `0.5`, `.5`, `3e-4`, `1.0e-05`) and finite.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any, Literal

__all__ = ["flag", "number_problem", "number_rule", "number_text", "with_dot"]

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def number_text(text: str) -> int | float | None:
    """The number a plain ASCII decimal spells (int without a dot or exponent), else None."""
    t = text.strip()
    if _INT.fullmatch(t):
        return int(t)
    if _FLOAT.fullmatch(t):
        v = float(t)
        return v if math.isfinite(v) else None  # '1e999' overflows to inf
    return None


def number_problem(value: Any, kind: type = float) -> str | None:
    """None when `value` is a finite number of `kind`, else why not, in words.

    `kind` is `int` (whole numbers only: 3, not 3.0) or `float` (which takes an int too).
    Text is never a number here: the caller decides whether to read it (`number_text`).
    """
    if isinstance(value, bool):
        return f"{str(value).lower()} is a boolean, not a number"
    if isinstance(value, Integral):
        return None
    if isinstance(value, Real):
        if not math.isfinite(float(value)):
            return f"{value!r} is not a finite number"
        return f"{value!r} is not a whole number" if kind is int else None
    if isinstance(value, str):
        if number_text(value) is not None:
            return f"{value!r} is text, not a number"
        too_big = _FLOAT.fullmatch(value.strip()) is not None
        return f"{value!r} is not a finite number" if too_big else f"{value!r} is not a plain decimal number"
    return f"{value!r} is not a number"


def number_rule(annotation: Any) -> tuple[type, bool, bool] | None:
    """What a typed field holds, when it holds numbers: (int or float, also takes text,
    is a tuple). `float`, `Union[int, None]`, `tuple[float, float]`, `Union[int, str]`
    qualify; `bool`, `str`, `Literal[...]` do not (None)."""
    types = _leaf_types(annotation)
    kind = float if float in types else int if int in types else None
    if kind is None:
        return None
    is_tuple = getattr(annotation, "__origin__", None) is tuple or any(
        getattr(a, "__origin__", None) is tuple for a in getattr(annotation, "__args__", None) or ()
    )
    return kind, str in types, is_tuple


def _leaf_types(annotation: Any) -> set:
    args = getattr(annotation, "__args__", None)
    if not args or getattr(annotation, "__origin__", None) is Literal:
        return {annotation}
    return set().union(*(_leaf_types(a) for a in args if a is not Ellipsis))


def with_dot(text: str) -> str:
    """`1e-05` -> `1.0e-05`: how to write an exponent number so YAML 1.1 reads a float."""
    return re.sub(r"^([+-]?[0-9]+)([eE])", r"\1.0\2", text.strip())


def flag(kind: type = float, *, ge: float | None = None, gt: float | None = None) -> Callable[[str], Any]:
    """An argparse `type=`: a finite number of `kind`, optionally `>= ge` / `> gt`.

    argparse reports a refusal as `argument --flag: MESSAGE` and exits 2.
    """

    def parse(text: str) -> int | float:
        value = number_text(text)  # finite when not None
        problem = None
        if value is None:
            problem = number_problem(text, kind)
        elif kind is int and not isinstance(value, int):
            problem = f"{text!r} is not a whole number"
        elif ge is not None and value < ge:
            problem = f"{text!r} is below {ge:g}"
        elif gt is not None and value <= gt:
            problem = f"{text!r} is not above {gt:g}"
        if problem is not None:
            want = "an integer" if kind is int else "a finite number"
            bounds = (f" >= {ge:g}" if ge is not None else "") + (f" > {gt:g}" if gt is not None else "")
            raise argparse.ArgumentTypeError(f"{problem}; expected {want}{bounds}")
        return float(value) if kind is float else value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse
