"""The Mask R-CNN paper's RoI-extractor numbers: He et al., arXiv 1703.06870 v3, COCO minival, ResNet-50.

Mask AP (`segm/*`) and box AP (`bbox/AP`) in AP points, keyed by the backbone kind of our settings
(config model.backbone.kind), then by the paper's row (roi_heads.variants.Variant.paper_row).
"""

from __future__ import annotations

# Table 2c (ResNet-50-C4) and Table 2d (ResNet-50-C5, stride 32). Table 2c reports no box AP.
TABLES: dict[str, tuple[str, dict[str, dict[str, float]]]] = {
    "c4": ("Table 2c", {
        "RoIPool": {"segm/AP": 26.9, "segm/AP50": 48.8, "segm/AP75": 26.4},
        "RoIWarp, max": {"segm/AP": 27.2, "segm/AP50": 49.2, "segm/AP75": 27.1},
        "RoIWarp, ave": {"segm/AP": 27.1, "segm/AP50": 48.9, "segm/AP75": 27.1},
        "RoIAlign, max": {"segm/AP": 30.2, "segm/AP50": 51.0, "segm/AP75": 31.8},
        "RoIAlign, ave": {"segm/AP": 30.3, "segm/AP50": 51.2, "segm/AP75": 31.5},
    }),
    "c5": ("Table 2d", {
        "RoIPool": {"segm/AP": 23.6, "segm/AP50": 46.5, "segm/AP75": 21.6, "bbox/AP": 28.2},
        "RoIAlign, ave": {"segm/AP": 30.9, "segm/AP50": 51.8, "segm/AP75": 32.1, "bbox/AP": 34.0},
    }),
}

# With FPN the paper gives no per-variant table, only RoIAlign's approximate gain over RoIPool in its text.
TEXT_GAINS: dict[str, tuple[str, dict[str, dict[str, float]]]] = {
    "fpn": ("text on FPN, approximate", {"RoIAlign, ave": {"segm/AP": 1.5, "bbox/AP": 0.5}}),
}
