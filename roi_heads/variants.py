"""The RoI variants, one row per `roi=` option: op arguments, how figures draw them, their row in the paper.

The analysis tools (gap report, misalignment probe, figures) read variants from here, so a variant's
name, colour and order are spelled once. The model itself is built from the `roi` config
(`configs/roi/<name>.yaml`), which holds the same op arguments; tests/test_variants.py keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Variant:
    name: str  # the `roi=` option, as runs and metrics.json name it
    kind: str  # RoIOp arguments: "align" | "pool" | "warp"
    pool_mode: str  # "avg" | "max" over each bin's samples
    aligned: bool  # half-pixel-corrected RoIAlign (align only)
    sampling_ratio: int  # bilinear samples per bin side (align and warp; 0 for pool)
    label: str  # for legends and titles
    color: str
    marker: str
    linestyle: str  # dashed for the variant whose curve coincides with another's in the probe's figure
    paper_row: str | None  # its row in Mask R-CNN Table 2c/2d (maskrcnn.analysis.paper_table2); None: no row

    def op_args(self) -> dict[str, str | bool | int]:
        """The arguments of roi_heads.RoIOp: kind, pool_mode, aligned, sampling_ratio."""
        return {"kind": self.kind, "pool_mode": self.pool_mode, "aligned": self.aligned,
                "sampling_ratio": self.sampling_ratio}


# In the order of the paper's Table 2c (more exact extraction further down), align_legacy before the aligned ops.
VARIANTS: tuple[Variant, ...] = (
    Variant("pool", "pool", "max", False, 0, "RoIPool", "#d62728", "s", "-", "RoIPool"),
    Variant("warp", "warp", "max", False, 2, "RoIWarp (max)", "#ff7f0e", "^", "-", "RoIWarp, max"),
    Variant("warp_avg", "warp", "avg", False, 2, "RoIWarp (avg)", "#bcbd22", "v", "--", "RoIWarp, ave"),
    Variant("align_legacy", "align", "avg", False, 2, "RoIAlign, aligned=False", "#9467bd", "D", "-", None),
    Variant("align_max", "align", "max", True, 2, "RoIAlign (max)", "#17becf", "P", "--", "RoIAlign, max"),
    Variant("align", "align", "avg", True, 2, "RoIAlign", "#1f77b4", "o", "-", "RoIAlign, ave"),
)
BY_NAME = {v.name: v for v in VARIANTS}
BASELINE = BY_NAME["pool"]  # the gap is measured against RoIPool, as in the paper


def variant(name: str) -> Variant:
    """The variant called `name`; a ValueError lists the known ones."""
    if name not in BY_NAME:
        raise ValueError(f"unknown RoI variant {name!r}; known: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def of_run(roi: str) -> Variant | None:
    """The variant of a run's `roi` (metrics.json): `align`, or `align-torchvision` (maskrcnn.resolvers.roi_id
    appends the impl); None for a name not in the table."""
    return BY_NAME.get(roi.partition("-")[0])


def find(**op_args: str | bool | int) -> Variant:
    """The one variant with these op arguments, e.g. find(kind="warp", pool_mode="max")."""
    unknown = set(op_args) - {f.name for f in fields(Variant)}
    if unknown:
        raise TypeError(f"find() got unknown field(s) {', '.join(sorted(unknown))}")
    found = [v for v in VARIANTS if all(getattr(v, k) == value for k, value in op_args.items())]
    if len(found) != 1:
        raise ValueError(f"{len(found)} RoI variants have {op_args}: {', '.join(v.name for v in found) or 'none'}")
    return found[0]
