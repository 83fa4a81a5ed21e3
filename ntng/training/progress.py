"""Progress bars where a person watches, plain lines everywhere else.

`enabled()` decides: `NTNG_PROGRESS=1` / `0` forces it; otherwise a bar shows in a terminal (stderr is a TTY) and
in a Jupyter kernel, never when `CI` is set. `Bar` is a `tqdm.auto` bar (a widget in notebooks with ipywidgets,
text elsewhere) or, when progress is off, nothing at all: callers log one line per event (an evaluation, a finished
grid cell) in both cases, and `Bar.write` prints such a line above a live bar instead of through it.
"""

from __future__ import annotations

import os
import sys

PROGRESS_ENV = "NTNG_PROGRESS"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def in_notebook() -> bool:
    """Running inside a Jupyter kernel (a notebook, JupyterLab, papermill)."""
    return "ipykernel.zmqshell" in sys.modules


def enabled() -> bool:
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in _TRUE or forced in _FALSE:
        return forced in _TRUE
    if os.environ.get("CI", "").strip().lower() not in ("", *_FALSE):
        return False  # CI logs keep one line per event, not carriage-return noise
    if in_notebook():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


class Bar:
    """A bar over `total` (or nothing when progress is off); `write` logs a line above it."""

    def __init__(self, total: float, desc: str, log=print, bar_format: str | None = None, initial: float = 0,
                 enable: bool | None = None):
        self.log = log
        self._bar = None
        if enabled() if enable is None else enable:
            from tqdm.auto import tqdm  # its warning in a kernel without ipywidgets is filtered in ntng/__init__
            self._bar = tqdm(total=total, desc=desc, initial=initial, bar_format=bar_format, dynamic_ncols=True,
                             leave=True)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def advance_to(self, value: float) -> None:
        """Move the bar to `value`, at most its total (a run ends up to one step past its budget)."""
        if self._bar is not None:
            value = min(value, self._bar.total) if self._bar.total else value
            if value != self._bar.n:
                self._bar.update(value - self._bar.n)

    def postfix(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def write(self, message: str) -> None:
        if self._bar is None:
            self.log(message)
            return
        with self._bar.external_write_mode():  # clear the bar, print, redraw it below
            self.log(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
