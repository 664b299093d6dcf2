"""The command line: parse, call the public verbs, print.

``dispatch`` holds the table of commands (name -> parser options and handler) and ``main``; one module per group
of commands (``optimize``, ``packages``: info and export, ``serve``, ``measure``: bench, compare and profile,
``demo``) and ``args`` for what their parsers share. The CLI is the one place that wires the server (``serve/``)
in.
"""

from inferforge.cli.dispatch import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
