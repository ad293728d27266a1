"""The ``jaxnn`` command line: the only part of jaxnn that prints.

Each verb lives in its own module of this package and exposes ``add_parser(subparsers)``, which
registers the verb's flags and sets ``func`` to a ``run(args) -> int`` function. User errors are
raised as :class:`CLIError` (or ``ValueError``/``FileNotFoundError`` from the library) and printed
as one line on stderr with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "CLIError", "VERBS"]

#: The verbs, in the order ``jaxnn --help`` lists them, and the module that implements each.
VERBS = {
    "train": "jaxnn.cli._train",
    "resume": "jaxnn.cli._train",
    "diagnose": "jaxnn.cli._diagnose",
    "gradcheck": "jaxnn.cli._gradcheck",
    "experiment": "jaxnn.cli._experiment",
    "search": "jaxnn.cli._search",
    "compare": "jaxnn.cli._experiment",
    "ensemble": "jaxnn.cli._search",
    "bench": "jaxnn.cli._bench",
}


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as argparse does, but without the usage dump
        sys.stderr.write(f"jaxnn: error: {message}\n")
        raise SystemExit(2)


def _build_parser() -> argparse.ArgumentParser:
    from jaxnn import __version__

    parser = _Parser(
        prog="jaxnn",
        description="Train neural networks well: train, babysit, tune and measure them.",
    )
    parser.add_argument("--version", action="version", version=f"jaxnn {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    seen = set()
    for module_name in VERBS.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:  # a verb whose module is not part of this build
            if e.name == module_name:
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxnn`` console script."""
    if argv is None:  # the console script: keep freed buffers before JAX allocates any
        from jaxnn._malloc import apply_fast_malloc

        apply_fast_malloc()
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("jaxnn: interrupted\n")
        return 130
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"jaxnn {args.verb}: error: {msg}\n")
        return 2
