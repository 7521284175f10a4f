"""A user's own extractor, in a folder outside the repo: its configs and its Python modules in one place.

``hydra.searchpath=[file://DIR]`` makes Hydra look for config groups in DIR (``DIR/roi/mine.yaml`` is
``roi=mine``); :func:`import_searchpath_modules` also puts DIR on ``sys.path``, so a module next to those
configs (``DIR/myext.py``, ``_target_: myext.MyExtractor``) imports without setting PYTHONPATH, in the checkout
and in an installed copy alike. The commands (maskrcnn.cli) and ``maskrcnn.config.compose_config`` call it
before building anything.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

FILE_SCHEME = "file://"


def searchpath_dirs(searchpath: Iterable[str], base: Path | None = None) -> list[Path]:
    """The folders of the ``file://`` entries of a hydra.searchpath, a relative one resolved against ``base``
    (default: the working directory). ``pkg://`` entries name packages, which are importable already."""
    base = base or Path.cwd()
    return [(base / entry[len(FILE_SCHEME):]).resolve() for entry in searchpath if entry.startswith(FILE_SCHEME)]


def import_searchpath_modules(searchpath: Iterable[str]) -> list[Path]:
    """Appends every ``file://`` folder of ``searchpath`` to sys.path; returns the folders added."""
    return add_to_sys_path(searchpath_dirs(searchpath))


def add_to_sys_path(folders: Iterable[Path]) -> list[Path]:
    """Appends each folder to sys.path (once each; appended, so a user's module never shadows an installed
    package); returns the folders added."""
    added = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"hydra.searchpath: no folder at {folder}")
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
            added.append(folder)
    return added
