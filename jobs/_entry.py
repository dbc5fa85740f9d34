"""Shared entry-point behaviour: best allocator, one-line user errors, exit codes."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from head2toe.errors import H2TError

EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (no usage dump) and exits 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def user_error(message: str) -> int:
    print(f"h2t: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; user errors become one clear stderr line and exit code 2."""
    try:
        return int(func(args) or 0)
    except H2TError as e:
        return user_error(str(e))
    except KeyboardInterrupt:
        print("h2t: interrupted", file=sys.stderr)
        return 130


def standalone(configure: Callable[[argparse.ArgumentParser], None], func, prog: str, argv=None) -> int:
    """`python -m jobs.X` entry: same arguments and behaviour as `h2t X`."""
    from head2toe.allocator import reexec_with_best_allocator

    reexec_with_best_allocator()
    parser = OneLineParser(prog=prog)
    configure(parser)
    return run_command(func, parser.parse_args(argv))
