"""What reaches the terminal: the `-v/--verbose` and `-q/--quiet` options.

Library code logs through `logging.getLogger(__name__)` under the `latentsight`
logger and draws tqdm bars through `latentsight.embedder.progress`; only here
(and in the dashboard) is it decided what shows. Default: info lines ("spec
auto: ...", "resuming scan ...") and bars on stderr; `-q`: warnings and errors
only, no bars; `-v`: debug lines too.
"""

from __future__ import annotations

import logging
import sys

from latentsight.embedder.progress import set_quiet

LOGGER = "latentsight"


class StderrHandler(logging.Handler):
    """Writes to the current `sys.stderr` (which a test runner may have swapped)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never end the command
            self.handleError(record)


class LineFormatter(logging.Formatter):
    """`message` for info and debug, `warning: message` / `error: message` above."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def configure(*, verbose: bool = False, quiet: bool = False) -> int:
    """Set the `latentsight` logger's level and handler, and the bars; returns the level."""
    if verbose and quiet:
        msg = "Give either -v/--verbose or -q/--quiet, not both."
        raise ValueError(msg)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(LineFormatter("%(message)s"))
        logger.addHandler(handler)
    set_quiet(quiet)
    return level
