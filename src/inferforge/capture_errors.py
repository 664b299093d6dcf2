"""Why torch.export (or Dynamo, or an exporter built on them) could not capture a model, in one line.

Their messages run to pages, name internals (``Eq(u0, 1)``, ``L['args'][0].size()[1]``) and bury the
one fact a user can act on: which line of *their* code did what capture cannot follow. This module finds
that line (in the message or the traceback, skipping torch's and inferforge's own frames) and says what
to do about the three failures users meet most: a branch on tensor values, a dynamic dim the code fixes,
an operator capture cannot handle. Anything else falls back to ``one_line``.
"""

from __future__ import annotations

import linecache
import re
import sys
import sysconfig
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from inferforge.errors import one_line

MESSAGE_LIMIT = 300  # characters: a message fits a leaderboard's reason column and a terminal line or two
CODE_SHOWN = 60  # characters of the user's source line quoted
CHAIN_DEPTH = 8  # wrapped exceptions followed (__cause__ / __context__)

KEEPS_PYTHON = "rely on the candidates that keep Python semantics (torchscript script, source)"


def explain_capture_failure(exc: BaseException) -> str:
    """One line, under about ``MESSAGE_LIMIT`` characters, saying what in the user's code stopped capture
    and what to do; ``one_line(exc)`` when the failure is none of the kinds recognised here."""
    chain = list(_chain(exc))
    text = "\n".join(_text(e) for e in chain)
    location = _user_location(chain)
    for explain in (_dim_constraint, _data_dependent, _unsupported_operator):
        if not explain(text, ""):
            continue
        # The location as fully as fits: with the source line, without it, or not at all.
        variants = [explain(text, where) for where in (location.full(), location.short(), "")] if location else \
            [explain(text, "")]
        return next((m for m in variants if len(m) <= MESSAGE_LIMIT), _clip(variants[-1]))
    return one_line(exc, MESSAGE_LIMIT)


# ---------------------------------------------------------------- the kinds of failure


def _data_dependent(text: str, where: str) -> str:
    """A Python ``if``/``while`` (or a size) on a tensor's value: export traces one path and cannot guard it."""
    if not re.search(r"data.dependent|GuardOnDataDependentSymNode|Dynamic control flow is not supported", text, re.I):
        return ""
    return (f"the model branches on tensor values{where}: torch.export cannot capture that; rewrite it with "
            f"torch.cond, or {KEEPS_PYTHON}")


_SPECIALIZED = re.compile(r"You marked (\w+) as dynamic but your code specialized it to be a constant \((\d+)\)")
_SUGGESTED = re.compile(r"^\s*(\w+)\s*=\s*(.+?)\s*$", re.M)
_INPUT_AXIS = re.compile(r"(\w+) = L\['(\w+)'\](?:\[\d+\])*\.size\(\)\[(\d+)\]")


def _dim_constraint(text: str, where: str) -> str:
    """A dim declared dynamic that the code fixes to one size, or allows only within a range."""
    if "Constraints violated" not in text and "specialized it to be a constant" not in text:
        return ""
    inputs = {m[1]: m[2] for m in _INPUT_AXIS.finditer(text) if m[2] != "args"}
    specialized = _SPECIALIZED.search(text)
    if specialized:
        dim, size = specialized[1], specialized[2]
        return (f"dim {dim} is marked dynamic but the model fixes it to {size}{where}: fix the dim with "
                f"--input {inputs.get(dim, 'name')}:dtype[B,{size}] ({size} in place of {dim}), or make the code "
                f"accept any {dim}")
    fixes = dict(_SUGGESTED.findall(text.split("Suggested fixes", 1)[1])) if "Suggested fixes" in text else {}
    dims = re.search(r"Constraints violated \(([^)]*)\)", text)
    dim = next(iter(fixes), None) or (dims[1].split(",")[0].strip() if dims else "a dynamic dim")
    fix = (f"torch.export suggests {dim} = {fixes[dim]}, which inferforge tried" if dim in fixes
           else "torch.export suggested no range")
    return (f"dim {dim} cannot take every size{where} ({fix}): the graph-capture candidates fail, the ones that "
            f"keep Python semantics (torchscript script, source) still run; or fix the dim with "
            f"--input {inputs.get(dim, 'name')}:dtype[B,<size>]")


_OPERATOR_PATTERNS = (  # how the exporters name the operator, most specific first
    re.compile(r"OpOverload\(op='([\w.:]+)'"),
    re.compile(r"CustomOpDef\(([\w.:]+)\)"),
    re.compile(r"the operator '([\w.:]+)'"),
    re.compile(r"Could not run '([\w.:]+)'"),
    re.compile(r"No decomposition found for ([\w.:]+)"),
    re.compile(r"\b((?:aten|prims|quantized|torchvision)(?:\.|::)\w+)"),
)
_NO_KERNEL = re.compile(r"\"(\w+)\" not implemented for '(\w+)'")


def _unsupported_operator(text: str, where: str) -> str:
    """An operator capture (or the target format) has no rule for: name it, since that is what to replace."""
    if not re.search(r"unsupported|no decomposition|not implemented for|no fake impl|No ONNX function found|"
                     r"Could not run '|is not supported", text, re.I):
        return ""
    no_kernel = _NO_KERNEL.search(text)
    if no_kernel:
        return (f"operator {no_kernel[1]} has no {no_kernel[2]} kernel here{where}: candidates in that precision "
                "cannot run this model; the others still can")
    op = next((m[1] for pattern in _OPERATOR_PATTERNS for m in [pattern.search(text)] if m), None)
    if op is None:
        return ""  # no operator named: the generic one-line message says more than a guess
    return (f"operator {op} is not supported by this capture{where}: replace it with standard torch ops, or "
            f"give it a fake (meta) implementation or a decomposition; {KEEPS_PYTHON}")


# ---------------------------------------------------------------- where in the user's code


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < CHAIN_DEPTH:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_TEXT_FRAMES = (re.compile(r'File "([^"]+)", line (\d+)'), re.compile(r"# File: (\S+?):(\d+) in "))


@dataclass(frozen=True)
class _Location:
    """A line of the user's code."""

    file: str
    line: int

    def short(self) -> str:
        """' at FILE:LINE'."""
        return f" at {_short(self.file)}:{self.line}"

    def full(self) -> str:
        """' at FILE:LINE (`source line`)', the source line read with linecache."""
        code = " ".join(linecache.getline(self.file, self.line).split())
        if len(code) > CODE_SHOWN:
            code = code[: CODE_SHOWN - 1] + "…"
        return self.short() + (f" (`{code}`)" if code else "")


def _user_location(chain: list[BaseException]) -> _Location | None:
    """The innermost frame of the user's code that capture ran, or None when none is known.

    The exception's own text names the frame torch blamed (its "User stack", "The following call raised"),
    so it is read first, innermost exception first; then the tracebacks, where the leading user frames are
    the caller of export (the user's script), not the model, and are skipped.
    """
    roots = _library_roots()
    for exc in reversed(chain):
        frames = [_Location(m[1], int(m[2])) for pattern in _TEXT_FRAMES for m in pattern.finditer(str(exc))]
        user = [f for f in frames if _is_user_file(f.file, roots)]
        if user:
            return user[-1]
    for exc in reversed(chain):
        frames = [_Location(f.filename, f.lineno or 0) for f in traceback.extract_tb(exc.__traceback__)]
        first_library = next((i for i, f in enumerate(frames) if not _is_user_file(f.file, roots)), len(frames))
        user = [f for f in frames[first_library:] if _is_user_file(f.file, roots)]  # before: the caller of export
        if user:
            return user[-1]
    return None


def _library_roots() -> tuple[Path, ...]:
    """Folders whose code is not the user's: inferforge, torch, the standard library."""
    roots = [Path(__file__).resolve().parent]
    torch_file = getattr(sys.modules.get("torch"), "__file__", None)  # torch built from a checkout, too
    if torch_file:
        roots.append(Path(torch_file).resolve().parent)
    roots += [Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib")]
    return tuple(roots)


def _is_user_file(file: str, roots: tuple[Path, ...]) -> bool:
    if not file or file.startswith("<"):
        return False
    path = Path(file)
    if {"site-packages", "dist-packages"} & set(path.parts):
        return False
    resolved = path.resolve()
    return not any(resolved.is_relative_to(root) for root in roots)


def _short(file: str) -> str:
    """The path relative to the working directory when it is under it: shorter, and what the user typed."""
    path = Path(file)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return file


def _clip(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 1] + "…"

