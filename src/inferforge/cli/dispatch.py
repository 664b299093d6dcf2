"""The command table, the parser built from it, and the one place errors become exit codes.

Errors a user can fix exit with status 2 and one message; --debug adds the traceback. Each command module
imports what it needs inside its functions, and ``main`` fills in only the options of the command being run, so
``inferforge --help`` imports nothing heavy and ``inferforge info`` does not import the server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inferforge.cli import demo, measure, optimize, packages, serve
from inferforge.cli.args import DefaultsFormatter
from inferforge.errors import InferforgeError
from inferforge.version import __version__


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # the exit status
    description: str | None = None  # --help's text for the command, when its one-line help is not enough


COMMANDS: dict[str, Command] = {
    "optimize": Command(optimize.HELP, optimize.add_arguments, optimize.run),
    "export": Command(packages.EXPORT_HELP, packages.add_export_arguments, packages.run_export),
    "info": Command(packages.INFO_HELP, packages.add_info_arguments, packages.run_info),
    "serve": Command(serve.HELP, serve.add_arguments, serve.run, serve.DESCRIPTION),
    "bench": Command(measure.BENCH_HELP, measure.add_bench_arguments, measure.run_bench),
    "compare": Command(measure.COMPARE_HELP, measure.add_compare_arguments, measure.run_compare),
    "profile": Command(measure.PROFILE_HELP, measure.add_profile_arguments, measure.run_profile),
    "demo": Command(demo.HELP, demo.add_arguments, demo.run),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command with its options; ``only``: fill in that command's options alone (any other name, '' for
    instance: none), the others keep their name and help."""
    parser = argparse.ArgumentParser(prog="inferforge", description="Optimize, validate, benchmark and package "
                                     "PyTorch models for inference.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"inferforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        child = sub.add_parser(name, help=command.help, description=command.description or command.help,
                               formatter_class=DefaultsFormatter)
        if only is None or only == name:
            command.add_arguments(child)
    return parser


def quiet_third_party_warnings() -> None:
    """Deprecation notices from torch and other libraries (``_pytree`` registrations, exporter changes) say
    nothing a user of the CLI can act on; --debug keeps them. Set for this process and, through
    PYTHONWARNINGS, for the search's worker processes. The warnings left print as ``warning: ...``, without
    the source line that raised them."""
    import os
    import warnings

    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    quiet = "ignore::DeprecationWarning,ignore::FutureWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), quiet)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    named = next((word for word in argv if not word.startswith("-")), "")  # the command: only --debug comes before
    args = build_parser(only=named).parse_args(argv)
    if not args.debug:
        quiet_third_party_warnings()
    try:
        return COMMANDS[args.command].run(args)
    except InferforgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        from inferforge.errors import one_line

        print(f"internal error: {one_line(exc)} (run with --debug for the traceback, and please report it)",
              file=sys.stderr)
        return 1
