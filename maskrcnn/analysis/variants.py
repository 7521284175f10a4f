"""How reports and figures show each RoI variant: label, colour, marker, order, its row in the paper.

Presentation only. A variant's op and arguments live in its config (configs/roi/<name>.yaml, or a user's own);
this table is keyed by the run's `roi` name (metrics.json) and imports neither torch nor the ops, so the gap
report runs anywhere. A name it does not know (a user's extractor) gets a default style, after the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass

BASELINE = "pool"  # the gap is measured against RoIPool, as in the paper


@dataclass(frozen=True)
class Style:
    label: str  # for legends and titles
    color: str
    marker: str
    linestyle: str = "-"  # dashed for a variant whose curve coincides with another's in the probe's figure
    paper_row: str | None = None  # its row in Mask R-CNN Table 2c/2d (maskrcnn.analysis.paper_table2)
    unaligned: bool = False  # RoIAlign without the half-pixel correction: footnoted in the gap table


# In the order of the paper's Table 2c (more exact extraction further down), then the extractors after it.
STYLES: dict[str, Style] = {
    "pool": Style("RoIPool", "#d62728", "s", paper_row="RoIPool"),
    "pool-torchvision": Style("RoIPool (torchvision.ops)", "#e377c2", "s", "--"),
    "warp": Style("RoIWarp (max)", "#ff7f0e", "^", paper_row="RoIWarp, max"),
    "warp_avg": Style("RoIWarp (avg)", "#bcbd22", "v", "--", paper_row="RoIWarp, ave"),
    "align_legacy": Style("RoIAlign, aligned=False", "#9467bd", "D", unaligned=True),
    "align_legacy-torchvision": Style("RoIAlign, aligned=False (torchvision.ops)", "#c5b0d5", "D", "--",
                                      unaligned=True),
    "align_max": Style("RoIAlign (max)", "#17becf", "P", "--", paper_row="RoIAlign, max"),
    "align": Style("RoIAlign", "#1f77b4", "o", paper_row="RoIAlign, ave"),
    "align-torchvision": Style("RoIAlign (torchvision.ops)", "#aec7e8", "o", "--"),
    "align_adaptive": Style("RoIAlign, adaptive sampling", "#2ca02c", "X"),
    "prroi": Style("PrRoIPool (exact bin integral)", "#8c564b", "*"),  # examples/prroi_pool
}
_OTHERS = ("#7f7f7f", "#e7ba52", "#393b79", "#ad494a", "#637939", "#7b4173")


def style(name: str) -> Style:
    """The style of the variant called `name`; a name not in the table gets a grey-family default of its own."""
    if name in STYLES:
        return STYLES[name]
    return Style(name, _OTHERS[sum(map(ord, name)) % len(_OTHERS)], "o", ":")


def rank(name: str) -> tuple[int, str]:
    """Sort key: the table's order, then unknown names alphabetically."""
    order = list(STYLES)
    return (order.index(name) if name in STYLES else len(order), name)
