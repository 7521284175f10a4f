"""A `roi` config's name, and the rule that keeps it true: a run is named after the extractor it runs.

The built-in variants are the files of configs/roi/ (`roi=align` is configs/roi/align.yaml); they are the only
place their op arguments are written. A built-in name is accepted only for exactly its file's config. Anything
else (a user's extractor, a built-in op with other arguments) carries a name of its own, which the run
directory, metrics.json, the TensorBoard hparams and the gap report all show.

Imports neither torch nor the ops: the resolver that names run directories runs before anything is built.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from maskrcnn.config import CONFIG_DIR

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")  # a path component: run dirs are named after it
# Keys of a `roi` config that are not constructor arguments.
METADATA = ("name",)


class RoIConfigError(ValueError):
    """A `roi` config whose name is missing, malformed, or not the truth about its extractor."""


@functools.cache
def builtin_variants(roi_dir: Path = CONFIG_DIR / "roi") -> dict[str, dict[str, Any]]:
    """{name: config} of every configs/roi/<name>.yaml (its `name` key equals the file's stem)."""
    variants = {}
    for path in sorted(roi_dir.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if not isinstance(config, dict) or config.get("name") != path.stem:
            raise RoIConfigError(f"{path}: a built-in RoI variant must have `name: {path.stem}`")
        variants[path.stem] = config
    return variants


def roi_name(roi: Mapping[str, Any]) -> str:
    """The config's `name`; RoIConfigError when it is missing or not usable as a run-directory name."""
    name = roi.get("name") if isinstance(roi, Mapping) else None
    target = roi.get("_target_", "?") if isinstance(roi, Mapping) else "?"
    if name is None or name == "":
        raise RoIConfigError(
            f"the roi config (_target_: {target}) has no `name`. Every RoI extractor needs one: the run directory, "
            "metrics.json and the gap report are labelled with it. Add `name: <yours>` to its YAML file, or "
            "roi.name=<yours> (+roi.name=<yours> if the key does not exist) on the command line."
        )
    if not isinstance(name, str) or not NAME.match(name):
        raise RoIConfigError(
            f"roi.name={name!r} is not a valid name: letters, digits and _ . + - only, starting with a letter or a "
            "digit (it becomes part of the run directory's name)"
        )
    return name


def check_roi_config(roi: Mapping[str, Any]) -> str:
    """Returns the config's name after checking that a built-in name labels exactly the built-in config.

    Raises RoIConfigError naming both the built-in variant and what this config builds otherwise.
    """
    name = roi_name(roi)
    builtin = builtin_variants().get(name)
    if builtin is not None and dict(roi) != builtin:
        raise RoIConfigError(
            f"roi.name={name!r} names the built-in variant configs/roi/{name}.yaml, {describe(builtin)}, but this "
            f"config builds {describe(roi)}. A run must be named after the extractor it runs: give this one a name "
            f"of its own (roi.name=<yours>, not one of {', '.join(builtin_variants())})."
        )
    return name


def constructor_config(roi: Mapping[str, Any], accepted: set[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """(what Hydra instantiates, the keys left out): the config without its metadata (`name`) and, when the
    target's constructor takes only the arguments `accepted` (None: any), without the keys it does not take that
    are left over from a built-in config, i.e. whose value is a built-in variant's value for that key.

    So `roi._target_=myext.Mine roi.name=mine` on top of `roi=align` does not hand align's kind, pool_mode, ...
    to a constructor that has no such arguments; a key the user wrote that the constructor does not take still
    fails, naming it.
    """
    spec = {key: value for key, value in roi.items() if key not in METADATA}
    if accepted is None:
        return spec, []
    builtins = builtin_variants().values()
    left_out = [key for key, value in spec.items() if not key.startswith("_") and key not in accepted
                and any(key in b and b[key] == value for b in builtins)]  # fmt: skip
    return {key: value for key, value in spec.items() if key not in left_out}, left_out


def describe(roi: Mapping[str, Any]) -> str:
    """E.g. 'roi_heads.RoIOp(kind=align, pool_mode=avg, aligned=True, sampling_ratio=2)'."""
    args = ", ".join(f"{k}={v}" for k, v in roi.items() if k not in METADATA and not k.startswith("_"))
    partial = " (partial)" if roi.get("_partial_") else ""
    return f"{roi.get('_target_', '<no _target_>')}({args}){partial}"
