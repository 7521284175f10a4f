"""How reports show RoI variants (maskrcnn/analysis/variants.py): every built-in has its own style, and a user's
extractor, unknown to the table, still gets one."""

from maskrcnn.analysis.variants import BASELINE, STYLES, rank, style
from maskrcnn.roi_config import builtin_variants


def test_every_builtin_variant_and_the_example_have_a_style_of_their_own():
    names = [*builtin_variants(), "prroi"]
    assert set(names) <= STYLES.keys()
    for attribute in ("color", "label"):
        assert len({getattr(style(n), attribute) for n in names}) == len(names), attribute
    assert BASELINE in builtin_variants() and style(BASELINE).paper_row == "RoIPool"


def test_an_unknown_name_gets_a_default_style_and_sorts_after_the_known_ones():
    mine = style("my_extractor")
    assert mine.label == "my_extractor" and mine.paper_row is None and not mine.unaligned
    assert mine == style("my_extractor"), "the same name always draws the same"
    assert mine.color not in {s.color for s in STYLES.values()}
    order = sorted(["zzz_mine", "align", "aaa_mine", "pool", "prroi"], key=rank)
    assert order == ["pool", "align", "prroi", "aaa_mine", "zzz_mine"]
