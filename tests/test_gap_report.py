"""maskrcnn.analysis.gap_report (+ gap_runs, gap_stats): the merged paper-style table over runs' metrics.json files,
checked against numbers computed by hand on synthetic runs."""

import json
import math

import numpy as np
import pytest
import yaml

from maskrcnn.analysis import gap_report
from maskrcnn.analysis.gap_runs import METRICS, ReportError, load_runs
from maskrcnn.analysis.gap_stats import paired_difference, t_quantile

C4 = "C4 · r18_c4 · shapes · 600 steps × 4 images, lr 0.02 (×0.1 at 450)"
C5 = "C5 · r18_c5 · shapes · 800 steps × 4 images, lr 0.02 (×0.1 at 600)"


def _write_run(root, roi, seed, mask, box=0.2, model="r18_c5", steps=800, lr_steps=(600,), batch=4,
               backbone_key="features", **model_cfg):
    """mask: (AP, AP50, AP75) in [0, 1]. Writes <root>/<model>_<roi>_s<seed>/{metrics.json, .hydra/config.yaml}.
    backbone_key: "kind" writes the config of runs from before model.backbone.kind was renamed to features."""
    metrics = {k: 0.1 for k in METRICS}
    metrics.update({"segm/AP": mask[0], "segm/AP50": mask[1], "segm/AP75": mask[2], "bbox/AP": box})
    run = root / f"{model}_{roi}_s{seed}"
    (run / ".hydra").mkdir(parents=True)
    record = {**metrics, "roi": roi, "model": model, "data": "shapes", "seed": seed, "steps": steps,
              "train_minutes": 9.5, "device": "CPU test"}
    (run / "metrics.json").write_text(json.dumps(record))
    config = {"model": {"name": model, "backbone": {backbone_key: model.split("_")[1]}, **model_cfg},
              "roi": {"name": roi}, "data": {"name": "shapes", "module": {"batch_size": batch, "seed": "${seed}"}},
              "optim": {"lr": 0.02, "steps": list(lr_steps), "gamma": 0.1}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return run


@pytest.fixture
def two_sweeps(tmp_path):
    """C4: pool and align, seeds 0-2 (pool seed 0 from before the backbone.kind rename). C5 (another sweep dir):
    pool seeds 0-1, align seed 0 only."""
    c4, c5 = tmp_path / "sweep_c4", tmp_path / "sweep_c5"
    for seed, (pool, align) in enumerate([(0.10, 0.30), (0.12, 0.31), (0.14, 0.36)]):
        _write_run(c4, "pool", seed, (pool, 0.40, 0.20), box=0.2, model="r18_c4", steps=600, lr_steps=(450,),
                   backbone_key="kind" if seed == 0 else "features")
        _write_run(c4, "align", seed, (align, 0.50, 0.30 + seed / 100), box=0.3, model="r18_c4", steps=600,
                   lr_steps=(450,))
    _write_run(c5, "pool", 0, (0.02, 0.06, 0.01), box=0.03)
    _write_run(c5, "pool", 1, (0.04, 0.08, 0.01), box=0.05)
    _write_run(c5, "align", 0, (0.08, 0.16, 0.08), box=0.09)
    return [c5, c4]  # given in the "wrong" order: the table still puts C4 (Table 2c) first


def test_t_quantile_matches_closed_forms():
    p = 0.975
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    a = 4 * p * (1 - p)  # df = 4 has a closed form too
    assert t_quantile(p, 4) == pytest.approx(2 * math.sqrt(math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a) - 1),
                                             rel=1e-9)
    assert t_quantile(p, 100_000) == pytest.approx(1.959964, abs=1e-4)  # the normal quantile
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile(p, 0)


def test_paired_difference_is_the_t_interval_of_the_differences():
    ours, base = {0: 30.0, 1: 31.0, 2: 36.0, 7: 50.0}, {0: 10.0, 1: 12.0, 2: 14.0, 3: 99.0}
    got = paired_difference(ours, base)
    d = np.array([20.0, 19.0, 22.0])  # seeds 0-2 only: 7 and 3 have no partner
    half = (0.95 / math.sqrt(2 * 0.975 * 0.025)) * d.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2} in closed form
    assert got["seeds"] == [0, 1, 2] and got["n"] == 3
    assert got["mean"] == pytest.approx(d.mean()) and got["std"] == pytest.approx(d.std(ddof=1))
    assert got["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert paired_difference({0: 3.0}, {0: 1.0})["ci"] is None, "one pair: no interval"
    assert paired_difference({0: 3.0}, {1: 1.0}) is None, "no common seed"


def test_merged_table_numbers_by_hand(two_sweeps, tmp_path):
    out = tmp_path / "report"
    gap_report.main([*map(str, two_sweeps), "--out", str(out), "--tensorboard", str(tmp_path / "tb")])
    summary = json.loads((out / "roi_gap_summary.json").read_text())["settings"]
    assert [s["setting"] for s in summary] == [C4, C5]
    pool, align = summary[0]["rows"]
    assert (pool["roi"], align["roi"]) == ("pool", "align")
    assert pool["mean"]["segm/AP"] == pytest.approx(12.0) and pool["std"]["segm/AP"] == pytest.approx(2.0)
    assert align["mean"]["segm/AP"] == pytest.approx(97 / 3)
    assert align["std"]["segm/AP"] == pytest.approx(math.sqrt(31 / 3))  # squares 49/9, 16/9, 121/9 over 2
    assert align["delta"]["segm/AP"] == pytest.approx(97 / 3 - 12.0)
    paired = align["paired"]["segm/AP"]  # differences 20, 19, 22: mean 61/3, std sqrt(7/3)
    half = 4.302652729749464 * math.sqrt(7 / 3) / math.sqrt(3)
    assert paired["ci"] == pytest.approx([61 / 3 - half, 61 / 3 + half])
    assert align["ratio"]["segm/AP75"] == pytest.approx(31.0 / 20.0)
    assert align["paper"]["segm/AP"] == 30.3 and align["paper_ratio"]["segm/AP75"] == pytest.approx(31.5 / 26.4)

    table = (out / "roi_gap.md").read_text()
    assert (f"| {C4} | pool | 12.0 ± 2.0 (26.9) | 40.0 ± 0.0 (48.8) | 20.0 ± 0.0 (26.4) | 20.0 ± 0.0 | 3 | — | — "
            "| — | — | — |") in table
    assert (f"|  | align | 32.3 ± 3.2 (30.3) | 50.0 ± 0.0 (51.2) | 31.0 ± 1.0 (31.5) | 30.0 ± 0.0 | 3 "
            f"| +20.3 (+3.4) | +20.3 [{61 / 3 - half:+.1f}, {61 / 3 + half:+.1f}] (3 pairs) | +10.0 [+10.0, +10.0] "
            "(3 pairs) | 1.25 (1.05) | 1.55 (1.19) |") in table
    # C5: one align seed -> no spread, a single pair without an interval; the paper's Table 2d beside it.
    assert f"| {C5} | pool | 3.0 ± 1.4 (23.6) | 7.0 ± 1.4 (46.5) | 1.0 ± 0.0 (21.6) | 4.0 ± 1.4 (28.2) | 2 |" in table
    assert ("|  | align | 8.0 (30.9) | 16.0 (51.8) | 8.0 (32.1) | 9.0 (34.0) | 1 | +5.0 (+7.3) | +6.0, CI n/a "
            "(1 pair) | +6.0, CI n/a (1 pair) | 2.29 (1.11) | 8.00 (1.49) |") in table

    runs = json.loads((out / "roi_gap.json").read_text())
    assert len(runs) == 9
    assert all({"setting", "roi", "seed", "metrics", "train_minutes", "device"} <= set(r) for r in runs)
    assert {r["setting"] for r in runs} == {C4, C5} and all(set(r["metrics"]) == set(METRICS) for r in runs)
    assert (out / "roi_gap.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_fpn_gets_the_papers_text_gain_and_legacy_align_its_footnote(tmp_path):
    for seed in (0, 1):
        _write_run(tmp_path, "pool", seed, (0.30, 0.5, 0.3), model="r18_fpn")
        _write_run(tmp_path, "align", seed, (0.32, 0.5, 0.3), model="r18_fpn")
    _write_run(tmp_path, "align_legacy", 0, (0.31, 0.5, 0.3), model="r18_fpn")
    _write_run(tmp_path, "align-torchvision", 0, (0.33, 0.5, 0.3), model="r18_fpn")
    summary = gap_report.summarize(load_runs([tmp_path]))
    table = gap_report.markdown(summary, "cmd")
    assert [r["roi"] for r in summary[0]["rows"]] == ["pool", "align_legacy", "align", "align-torchvision"]
    assert "| align | 32.0 ± 0.0 | 50.0 ± 0.0 | 30.0 ± 0.0 | 20.0 ± 0.0 | 2 | +2.0 (≈+1.5) |" in table
    assert "| align_legacy† | 31.0 | " in table and "† The paper has no row for `align_legacy`" in table


def test_errors_name_the_file(tmp_path, capsys):
    run = _write_run(tmp_path / "a", "pool", 0, (0.1, 0.4, 0.1))
    data = json.loads((run / "metrics.json").read_text())
    del data["segm/AP75"]
    (run / "metrics.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"r18_c5_pool_s0/metrics\.json: missing key\(s\) segm/AP75"):
        load_runs([tmp_path / "a"])
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"r18_c5_pool_s0/metrics\.json: not valid JSON"):
        load_runs([tmp_path / "a"])

    run = _write_run(tmp_path / "b", "pool", 0, (0.1, 0.4, 0.1))
    (run / ".hydra" / "config.yaml").unlink()
    with pytest.raises(ReportError, match=r"r18_c5_pool_s0: no run config next to metrics\.json"):
        load_runs([tmp_path / "b"])

    _write_run(tmp_path / "c1", "pool", 0, (0.1, 0.4, 0.1))
    _write_run(tmp_path / "c2", "pool", 0, (0.2, 0.4, 0.1))
    with pytest.raises(ReportError, match=r"c1/r18_c5_pool_s0/metrics\.json and .*c2/r18_c5_pool_s0/metrics\.json: "
                                          r"two runs of pool, seed 0"):
        load_runs([tmp_path / "c1", tmp_path / "c2"])

    _write_run(tmp_path / "d", "pool", 0, (0.1, 0.4, 0.1), roi_heads={"batch_size_per_image": 32})
    _write_run(tmp_path / "d", "align", 0, (0.1, 0.4, 0.1), roi_heads={"batch_size_per_image": 64})
    with pytest.raises(ReportError, match=r"different model configs \(model\.roi_heads\.batch_size_per_image: "
                                          r"64 vs 32\)"):
        load_runs([tmp_path / "d"])

    with pytest.raises(SystemExit) as exit_info:
        gap_report.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "gap_report: error: no metrics.json found under" in capsys.readouterr().err


BLOCK_TORCH = """
import importlib.abc, runpy, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "ops", "torchvision", "roi_heads"):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, Blocked())
sys.argv = ["gap_report", *sys.argv[1:]]
runpy.run_module("maskrcnn.analysis.gap_report", run_name="__main__")
"""


def test_the_report_runs_where_torch_and_the_ops_cannot_be_imported(two_sweeps, tmp_path):
    """JSON in, markdown and a chart out: no torch, no compiled ops, and a user's extractor gets a style too."""
    import subprocess
    import sys

    _write_run(two_sweeps[0], "my_extractor", 0, (0.05, 0.1, 0.02))
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *map(str, two_sweeps), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| my_extractor |" in (out / "roi_gap.md").read_text()
    assert (out / "roi_gap.png").read_bytes()[:4] == b"\x89PNG"
