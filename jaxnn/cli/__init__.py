"""The ``jaxnn`` command line: the only part of jaxnn that prints.

Each verb lives in its own module of this package and exposes ``add_parser(subparsers)``, which
registers the verb's flags and sets ``func`` to a ``run(args) -> int`` function. User errors are
raised as :class:`CLIError` (or ``ValueError``/``OSError`` from the library) and printed as one
line on stderr, ``jaxnn VERB: error: ...`` (argparse's own errors too), exit status 2, never a
traceback; a failed file operation names the flag whose path it was. Every option's help shows
its default, and choices come from the library's registries (:data:`REGISTRY_PLACEHOLDERS`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings

__all__ = ["main", "CLIError", "VERBS"]

#: The verbs, in the order ``jaxnn --help`` lists them, and the module that implements each.
VERBS = {
    "train": "jaxnn.cli._train",
    "resume": "jaxnn.cli._train",
    "evaluate": "jaxnn.cli._use",
    "predict": "jaxnn.cli._use",
    "export": "jaxnn.cli._use",
    "report": "jaxnn.cli._report",
    "diagnose": "jaxnn.cli._diagnose",
    "gradcheck": "jaxnn.cli._gradcheck",
    "experiment": "jaxnn.cli._experiment",
    "search": "jaxnn.cli._search",
    "compare": "jaxnn.cli._experiment",
    "ensemble": "jaxnn.cli._search",
    "bench": "jaxnn.cli._bench",
    "data": "jaxnn.cli._data",
}


#: Verbs that train populations: the console script splits the CPU into one device per core
#: for them (:mod:`jaxnn._hostdevices`), so the members train on every core.
POPULATION_VERBS = ("search", "ensemble", "compare", "experiment")


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


#: Placeholders a help line may hold, filled from the registries when help is shown (so
#: ``jaxnn --help`` lists exactly the names the library accepts, and plain parsing stays free of
#: the JAX import the registries need).
REGISTRY_PLACEHOLDERS = {
    "{activations}": ("jaxnn.activations", "names"),
    "{losses}": ("jaxnn.losses", "names"),
    "{initializers}": ("jaxnn.initializers", "names"),
    "{optimizers}": ("jaxnn.optim", "names"),
    "{schedules}": ("jaxnn.optim", "schedule_names"),
    "{preprocessors}": ("jaxnn.preprocessing", "names"),
    "{compared_activations}": ("jaxnn.experiments", "ACTIVATIONS"),
}


def registry_names(placeholder: str) -> list[str]:
    """The names behind one of :data:`REGISTRY_PLACEHOLDERS`."""
    module, attr = REGISTRY_PLACEHOLDERS[placeholder]
    names = getattr(importlib.import_module(module), attr)
    return list(names() if callable(names) else names)


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows every option's default: ``(default: X)`` is appended to each help line
    that does not state its default already (switches show ``on``/``off``), and registry
    placeholders (:data:`REGISTRY_PLACEHOLDERS`) become the registry's names."""

    def _get_help_string(self, action):
        text = action.help or ""
        for placeholder in REGISTRY_PLACEHOLDERS:
            if placeholder in text:
                text = text.replace(placeholder, ", ".join(registry_names(placeholder)))
        if (not action.option_strings or action.default is argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        if isinstance(action.default, bool) and action.nargs == 0:
            shown = "on" if action.default else "off"
        elif action.default is None:
            shown = "not set"
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


class _Parser(argparse.ArgumentParser):
    """argparse with jaxnn's help format and its one-line errors: ``jaxnn VERB: error: ...``,
    exit status 2, no usage dump."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
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


def _verb_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The innermost parser ``args`` went through (``jaxnn experiment losses`` -> its parser)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[name]


def _os_error_message(e: OSError, args) -> str:
    """One sentence for a failed file operation, naming the flag whose path it was."""
    path = e.filename
    if path is None:
        return str(e).strip() or type(e).__name__
    path = os.fspath(path)
    flag = None
    for dest, value in sorted(vars(args).items()):
        if isinstance(value, str) and value and not dest.startswith("_"):
            v = os.path.normpath(value)
            if os.path.normpath(path) == v or os.path.normpath(path).startswith(v + os.sep):
                flag = "--" + dest.replace("_", "-") if dest != "run_dir" else "RUN_DIR"
                break
    what = e.strerror or type(e).__name__
    where = f"{flag} {path!r}" if flag else repr(path)
    return f"cannot use {where}: {what[0].lower()}{what[1:]}"


def _close_runs() -> None:
    """Release the run directories this process opened; one that an error left without any file
    of its own is removed (nothing is written half-way)."""
    from jaxnn.cli import _common

    while _common.OPEN_RUNS:
        _common.OPEN_RUNS.pop().abandon()


#: Functions in which a raised KeyboardInterrupt would be swallowed ("Exception ignored in ...")
#: instead of stopping the program: a SIGINT arriving there is delivered again a moment later.
_SWALLOWING = frozenset({"_xla_gc_callback", "__del__"})
#: Files in which a KeyboardInterrupt would leave JAX half set up: its backend initialization
#: starts a timer thread and cancels it in a ``finally`` it may not reach yet (the process then
#: waited 60 s at exit and printed JAX's "TPU backend initialization is taking more than 60
#: seconds"). A SIGINT there is delivered again a moment later too.
_DEFERRING_FILES = (os.path.join("jax", "_src", "xla_bridge.py"),)
#: Seconds after a Ctrl-C within which the KeyboardInterrupt must reach :func:`main`; if some
#: library swallowed it, the process ends then ("interrupted", exit 130).
_INTERRUPT_GRACE = 10.0
_SIGINT = {"raised": False, "handled": False}


def _install_sigint(prog: list[str]) -> None:
    """Ctrl-C (SIGINT) in the console script: a ``KeyboardInterrupt`` in the main thread, as
    usual, except where it would be lost or break an import or JAX's set-up half-way (a gc
    callback such as JAX's, a ``__del__``, an import, JAX's backend initialization): there the
    signal is sent again 50 ms later. A second
    Ctrl-C while the first one is being handled ends the process at once (``prog``:
    "interrupted", exit 130), and so does a first one whose KeyboardInterrupt has not reached
    :func:`main` within :data:`_INTERRUPT_GRACE` seconds (a library swallowed it)."""
    import signal
    import threading

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # ignored (a background job) or handled by someone else: leave it
    state = _SIGINT

    def watchdog():
        if not state["handled"]:
            os.kill(os.getpid(), signal.SIGINT)

    def handler(signum, frame):
        f = frame
        while f is not None:
            code = f.f_code
            if (code.co_name in _SWALLOWING or code.co_filename.startswith("<frozen importlib")
                    or code.co_filename.endswith(_DEFERRING_FILES)):
                timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
                timer.daemon = True
                timer.start()
                return
            f = f.f_back
        if state["raised"]:
            sys.stderr.write(f"{prog[0]}: interrupted\n")
            sys.stderr.flush()
            os._exit(130)
        state["raised"] = True
        timer = threading.Timer(_INTERRUPT_GRACE, watchdog)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def _one_line_warnings(prog: str):
    """Library warnings (``warnings.warn``) as one line each, ``jaxnn VERB: warning: ...``, and
    the same message once however many places say it."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text not in shown:
            shown.add(text)
            sys.stderr.write(f"{prog}: warning: {text}\n")
            sys.stderr.flush()

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxnn`` console script (``argv=None``: ``sys.argv``).

    Run as the console script, it first keeps freed buffers in the process
    (:mod:`jaxnn._malloc`), turns on JAX's persistent compilation cache
    (:mod:`jaxnn._startup`) and, for the verbs that train populations, splits the CPU into one
    device per core (:mod:`jaxnn._hostdevices`). A user error prints one line, ``jaxnn VERB: error: ...``, and
    returns 2; no verb (or no experiment) prints the help on stderr and returns 2.
    """
    console = argv is None
    words = sys.argv[1:] if argv is None else argv
    # The verb's name, for the "interrupted" line (refined once the arguments are parsed).
    prog = [f"jaxnn {words[0]}" if words and words[0] in VERBS else "jaxnn"]
    if console:
        _install_sigint(prog)
    try:
        return _main(argv, console, prog)
    except KeyboardInterrupt:  # during start-up, before the verb runs
        _SIGINT["handled"] = True
        sys.stderr.write(f"{prog[0]}: interrupted\n")
        if console:
            _quiet_teardown()
        return 130


def _quiet_teardown() -> None:
    """After a Ctrl-C has been reported: what libraries stopped half-way fail to close at exit
    ("Exception ignored in: <function BaseEventLoop.__del__>", orbax's asyncio event loop
    interrupted while closing; "RuntimeWarning: coroutine ... was never awaited", its pending
    save steps) is not printed. The line "interrupted" said what happened."""
    sys.unraisablehook = lambda unraisable: None
    warnings.simplefilter("ignore")


def _main(argv, console: bool, prog: list[str]) -> int:
    if console:  # keep freed buffers before JAX allocates any
        from jaxnn._malloc import apply_fast_malloc

        apply_fast_malloc()
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    verb_parser = _verb_parser(parser, args)
    prog[0] = verb_parser.prog
    if extra:
        verb_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        verb_parser.print_help(sys.stderr)
        sys.stderr.write(f"{verb_parser.prog}: error: choose one of the commands listed above\n")
        return 2
    if console:
        from jaxnn._startup import enable_compile_cache

        enable_compile_cache()
        if args.verb in POPULATION_VERBS:  # one CPU device per core, before JAX starts
            from jaxnn._hostdevices import split_host_devices

            split_host_devices()
    try:
        try:
            with _one_line_warnings(verb_parser.prog):
                return int(args.func(args) or 0)
        finally:
            _close_runs()
    except KeyboardInterrupt:
        _SIGINT["handled"] = True
        sys.stderr.write(f"{verb_parser.prog}: interrupted\n")
        if console:
            _quiet_teardown()
        return 130
    except (CLIError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"{verb_parser.prog}: error: {msg}\n")
        return 2
    except OSError as e:
        sys.stderr.write(f"{verb_parser.prog}: error: {_os_error_message(e, args)}\n")
        return 2
