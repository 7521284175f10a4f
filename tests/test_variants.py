"""The table of RoI variants (roi_heads/variants.py) agrees with the `roi` config group the model is built from."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from roi_heads import RoIOp
from roi_heads.variants import BASELINE, BY_NAME, VARIANTS, find, of_run, variant

ROI_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "roi"


def test_every_roi_config_is_a_variant_and_every_variant_a_config():
    assert sorted(p.stem for p in ROI_CONFIGS.glob("*.yaml")) == sorted(BY_NAME)


@pytest.mark.parametrize("path", sorted(ROI_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_roi_config_has_the_tables_op_arguments(path):
    cfg = OmegaConf.load(path)
    v = variant(path.stem)
    assert cfg.name == v.name
    assert {key: cfg[key] for key in v.op_args()} == v.op_args()
    RoIOp(**v.op_args())  # the arguments are ones the model's op accepts


def test_variants_are_told_apart_in_figures():
    assert len({v.color for v in VARIANTS}) == len(VARIANTS)
    assert len({v.marker for v in VARIANTS}) == len(VARIANTS)
    assert len({v.label for v in VARIANTS}) == len(VARIANTS)


def test_lookups():
    assert BASELINE.kind == "pool"
    assert of_run("align-torchvision") is variant("align") and of_run("nonesuch") is None
    assert find(kind="align", pool_mode="avg", aligned=False).name == "align_legacy"
    with pytest.raises(ValueError, match="unknown RoI variant 'nonesuch'; known: pool, warp"):
        variant("nonesuch")
    with pytest.raises(ValueError, match="2 RoI variants have"):
        find(kind="warp")
