"""What every command's parser shares: value types, and defaults read from the dataclass or signature that owns
them, so that the command line never restates a number and ``--help`` still shows it."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any


def field_default(owner: type, name: str) -> Any:
    """The default of dataclass ``owner``'s field ``name`` (a factory is called). KeyError when there is no such
    field or it has no default: a flag must name a real field."""
    for item in dataclasses.fields(owner):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
            break
    raise KeyError(f"{owner.__name__} has no field {name!r} with a default")


def parameter_default(function: Callable[..., Any], name: str) -> Any:
    """The default of ``function``'s parameter ``name``, for the verbs whose defaults live in their signature."""
    default = inspect.signature(function).parameters[name].default
    if default is inspect.Parameter.empty:
        raise KeyError(f"{function.__name__}() has no default for {name!r}")
    return default


def values(enum: type[Enum]) -> list[str]:
    """An enum's values, as argparse ``choices``."""
    return [str(member.value) for member in enum]


def joined(items: Iterable[object]) -> str:
    """'1,8,32': how a tuple default is written on the command line, and so in ``--help``."""
    return ",".join(str(item) for item in items)


class DefaultsFormatter(argparse.HelpFormatter):
    """Adds '(default: X)' to a flag's help where there is a default worth saying: not for flags that are off
    unless given, and not where the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text or action.option_strings == [] or default in (None, False, [], ())
                or default is argparse.SUPPRESS):
            return text
        shown = joined(default) if isinstance(default, tuple) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def fraction(text: str) -> float:
    """'1%' or '0.01' -> 0.01. A bare number above 1 is refused as ambiguous (did '5' mean 5% or 5?); the range
    itself is AccuracyBudget's to check."""
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not text.endswith("%") and value > 1:
        raise argparse.ArgumentTypeError(f"{text} is above 1: write it as a fraction (0.01) or a percentage ({text}%)")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32): batch sizes and replica counts, each 1 or more."""
    try:
        numbers = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be 1 or more")
    return numbers


def name_list(text: str) -> tuple[str, ...]:
    """'eager, onnxruntime' -> ('eager', 'onnxruntime')."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def adapter(text: str) -> object:
    """'text:tokenizer=PATH,...' or 'image:target=INPUT,...' -> an adapter spec (a bad one is argparse's error)."""
    from inferforge.adapters import parse_adapter
    from inferforge.errors import SpecError

    try:
        return parse_adapter(text)
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def given(args: argparse.Namespace, **fields: str) -> dict[str, Any]:
    """``{field: args.<flag>}`` for the flags given (argparse default None): for options whose default depends on
    something else (the package, the target), so the owner's default applies when the flag is left out."""
    return {field: getattr(args, flag) for field, flag in fields.items() if getattr(args, flag) is not None}
