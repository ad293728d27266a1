"""Progress reporting of the long-running verbs, on stderr (stdout keeps the final report).

One convention for every verb (``train`` first): a tqdm bar when stderr is a terminal, one
flushed line per unit of work when it is not (a pipe, a log file, nohup, SLURM), nothing with
``--quiet``. The library never prints: the verbs feed :class:`Progress` from the library's
callbacks (``train.fit(callback=...)``, ``on_group``, ``on_epoch``, ...).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping


def add_quiet_flag(parser) -> None:
    """``--quiet``, as ``jaxnn train`` has."""
    parser.add_argument("--quiet", action="store_true",
                        help="no progress on stderr (the final report and errors are still "
                             "printed)")


class Progress:
    """Progress of ``total`` units of work (``None``: not known in advance).

    ``step(line)`` marks one unit done: on a terminal the bar advances (its postfix shows
    ``postfix``, else the line); otherwise ``line`` is written to stderr and flushed, prefixed
    with ``"<desc>: "`` when ``prefix`` is set. ``note(line)`` is a line that does not advance
    the bar (on a terminal it only updates the postfix). ``quiet`` or ``enabled=False``: nothing.
    """

    def __init__(self, *, total: int | None, desc: str, unit: str = "step", quiet: bool = False,
                 enabled: bool = True, prefix: bool = True):
        self.total, self.desc, self.prefix = total, desc, prefix
        self.bar, self.lines = None, False
        self.done = 0
        self._t0 = time.perf_counter()
        if quiet or not enabled:
            return
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
        else:
            self.lines = True

    @property
    def active(self) -> bool:
        """Whether anything is shown at all (not quiet)."""
        return self.bar is not None or self.lines

    def elapsed(self) -> float:
        """Seconds since this progress started (or since :meth:`restart_clock`)."""
        return time.perf_counter() - self._t0

    def restart_clock(self) -> None:
        self._t0 = time.perf_counter()

    def count(self) -> str:
        """``"3/5"`` for the unit being completed (``"3"`` when the total is unknown)."""
        n = self.done + 1
        return f"{n}/{self.total}" if self.total is not None else str(n)

    def start(self, done: int) -> None:
        """Start at ``done`` units already done (a resumed run)."""
        self.done = done
        if self.bar is not None:
            self.bar.n = done
            self.bar.refresh()

    def _write(self, line: str) -> None:
        sys.stderr.write(f"{self.desc}: {line}\n" if self.prefix else f"{line}\n")
        sys.stderr.flush()

    def _postfix(self, postfix) -> None:
        if isinstance(postfix, Mapping):
            self.bar.set_postfix(postfix, refresh=False)
        else:
            self.bar.set_postfix_str(str(postfix), refresh=False)

    def step(self, line: str, *, postfix: str | Mapping | None = None) -> None:
        """One unit of work done."""
        self.done += 1
        if self.bar is not None:
            self._postfix(line if postfix is None else postfix)
            self.bar.update(1)
        elif self.lines:
            self._write(line)

    def note(self, line: str, *, postfix: str | Mapping | None = None) -> None:
        """A line that is not a unit of work of the bar (e.g. an epoch inside a unit)."""
        if self.bar is not None:
            self._postfix(line if postfix is None else postfix)
            self.bar.refresh()
        elif self.lines:
            self._write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
