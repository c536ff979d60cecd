"""The ``greenbus`` command.

Subcommands:

* ``greenbus serve``: run a WebSocket hub (``--host``, ``--port``, ``--token``...).
* ``greenbus pub TOPIC JSON``: publish one message to a hub.
* ``greenbus sub PATTERN``: print one JSON line per message from a hub.
* ``greenbus demo``: run the classic two-thread pyee scenario, its one-import
  port to ``greenbus.compat``, and its greenbus rewrite, and print them side
  by side (the scenarios ship in the ``greenbus.demo`` package).
* ``greenbus bench``: run the benchmark suite in ``perf/`` (same options as
  ``python -m perf``; it needs a source checkout).

Bad input never ends in a traceback.  Every argument is checked before
anything connects or binds: a bad value is a usage error, one line on stderr
in argparse's style (``greenbus serve: error: argument --port: ...``) and
exit status 2.  A failure at run time (a busy port, a certificate that does
not load, a malformed ACL, no hub to connect to) is one line naming the
problem (``greenbus serve: port 8765 is already in use``) and exit status 1.

The package, one responsibility per module:

* this module: the parser of the command and its subcommands, and ``main``;
* :mod:`.argtypes`: the ``type=`` functions that check each argument's value;
* :mod:`.serve`: ``greenbus serve``'s options and the hub it runs;
* :mod:`.clients`: ``greenbus pub`` and ``greenbus sub``;
* :mod:`.demo`: ``greenbus demo`` and ``greenbus bench``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import clients, demo, serve

__all__ = ["build_parser", "main"]

#: What runs each command once its arguments are parsed (``bench`` aside:
#: ``main`` hands its arguments to perf unparsed).
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": serve.serve_command,
    "pub": clients.pub_command,
    "sub": clients.sub_command,
    "demo": demo.demo_command,
}


class CommandParser(argparse.ArgumentParser):
    """The parser of one command (``greenbus serve``, ...): a usage error is one line.

    argparse prints a command's whole usage before the error, a dozen lines
    for ``serve``, burying the one that names the mistake; ``--help`` still
    shows it.  Arguments left over are an error of the command, not of
    ``greenbus``.  ``check(parser, args)`` runs after parsing, for the rules
    between options that ``type=`` cannot see; it calls ``parser.error``.
    """

    def __init__(
        self,
        *args: Any,
        check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.check = check

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` on stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse, refuse leftover arguments, then run ``check``; extras are always []."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        if self.check is not None:
            self.check(self, parsed)
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    """The ``greenbus`` parser; each command's parser is a :class:`CommandParser`.

    Parsing checks every value (the ``type=`` functions of :mod:`.argtypes`
    and ``serve.check_options``): a bad one exits with status 2 and one line,
    before any command runs.
    """
    parser = argparse.ArgumentParser(
        prog="greenbus", description="greenbus: a message bus for greenlets."
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    serve.add_arguments(
        commands.add_parser("serve", help="run a WebSocket hub", check=serve.check_options)
    )
    clients.add_pub_arguments(commands.add_parser("pub", help="publish one message to a hub"))
    clients.add_sub_arguments(commands.add_parser("sub", help="print messages from a hub"))
    commands.add_parser("demo", help="run the two-thread pyee/greenbus comparison side by side")
    commands.add_parser("bench", help="run the benchmark suite (options as python -m perf)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``greenbus`` command ``argv`` (default ``sys.argv[1:]``); its exit status.

    Raises:
        SystemExit: status 2 and one line on stderr for a usage error (bare
            ``greenbus`` and an unknown command keep argparse's usage too);
            status 1 and one line for a failure at run time.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        # perf parses its own options (they are listed by `greenbus bench --help`).
        return demo.bench_command(argv[1:])
    args = build_parser().parse_args(argv)
    # As typed: greenbus serve --workers N starts its workers with it.
    args.argv = argv
    return COMMANDS[args.command](args)
