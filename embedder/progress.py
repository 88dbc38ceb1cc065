"""Progress bars: tqdm on stderr, off when asked and when the CLI runs with --quiet.

Library code never decides what reaches a terminal: it logs through
`logging.getLogger(__name__)` and draws bars through `bar_disabled`, and the
CLI (`latentsight -q` / `-v`) or a script sets what shows.
"""

from __future__ import annotations

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar off (True) or back to tqdm's default (on a terminal)."""
    global _QUIET
    _QUIET = bool(quiet)


def bar_disabled(progress: bool = True) -> bool | None:
    """tqdm's `disable`: True when `progress` is off or bars are quiet, else None (a tty only)."""
    return True if _QUIET or not progress else None
