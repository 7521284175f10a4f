"""A user's own modules beside their config dir: importable by ``_target_`` in both the checkout and an install."""

from __future__ import annotations

import os
import sys


def import_path_from_searchpath(searchpath: list[str]) -> list[str]:
    """Appends each ``file://DIR`` of ``hydra.searchpath`` to ``sys.path`` (once), so that a module in DIR (say
    ``DIR/myext.py`` beside ``DIR/roi/mine.yaml``) can be named by ``_target_: myext.MyExtractor``.

    Appended, not prepended: a user's module never shadows an installed package. ``pkg://`` entries are
    already importable. -> the folders added.
    """
    added = []
    for entry in searchpath:
        if not entry.startswith("file://"):
            continue
        folder = os.path.abspath(entry[len("file://"):])
        if folder not in sys.path:
            sys.path.append(folder)
            added.append(folder)
    return added
