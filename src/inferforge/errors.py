"""One family of errors, each written for the person who has to act on it.

A message says what was expected, what came, and what to do. The CLI prints it
without a traceback (unless --debug) and exits non-zero.
"""

from __future__ import annotations


class InferforgeError(Exception):
    """Base of every error inferforge raises on purpose."""


class SourceError(InferforgeError):
    """The model could not be found, imported or loaded."""


class SpecError(InferforgeError):
    """An input spec is malformed or does not fit the model or the data."""


class DataError(InferforgeError):
    """Validation or calibration data is missing or does not fit the spec."""


class Unavailable(InferforgeError):
    """A backend cannot build or run here; the message is the reason."""


class BuildError(InferforgeError):
    """A backend failed to build a candidate."""


class AccuracyError(InferforgeError):
    """No candidate met the accuracy budget."""


class PackageError(InferforgeError):
    """A package is missing, corrupted, or cannot run on this machine."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """Shorten an exception (often a multi-page exporter trace) to one readable line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not text.startswith(type(exc).__name__) and not isinstance(exc, InferforgeError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ProtocolError(InferforgeError):
    """A served request is malformed or cannot be answered; ``status`` is the HTTP code to send.

    The gRPC front end maps the same status onto its codes (400 -> INVALID_ARGUMENT,
    404 -> NOT_FOUND, 503 -> UNAVAILABLE, ...), so both protocols say the same thing.
    """

    def __init__(self, message: str, status: int = 400, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
