"""Test helper: private copies of the session's shared homes."""

from __future__ import annotations

import shutil
from pathlib import Path

from latentsight.index.home import Home


def copy_home(home: Home, dest: Path) -> Home:
    """A private copy of a home (model and index paths are stored relative to it).

    The source's database connections are closed first, so the copy is a consistent file.
    """
    home.catalog.engine.dispose()
    return Home(shutil.copytree(home.root, dest))
