"""maskrcnn.analysis.misalignment_probe: where each RoI op looks, measured on a coordinate-encoding feature map."""

import json

import pytest
import torch

from maskrcnn.analysis import misalignment_probe


def test_probe_pool_error_grows_with_stride_and_align_stays_exact():
    table = misalignment_probe.probe(64, image_size=512, seed=1)
    assert all(table["align"][s]["mean"] < 0.05 for s in misalignment_probe.STRIDES)
    assert table["pool"][32]["mean"] > 4 * table["pool"][4]["mean"] > 0.5


def test_probe_recovers_a_known_shift():
    """A feature map shifted by half a cell is exactly aligned=False's offset: the probe must report it."""
    rois = misalignment_probe.random_rois(16, 256, margin=32.0, seed=2)
    err = misalignment_probe.bin_errors(misalignment_probe.probe_variants()["align_legacy"], 8, rois, 256)
    assert err.mean().item() == pytest.approx(4 * 2**0.5, abs=0.05), "half a stride-8 cell in x and y"
    assert torch.isfinite(err).all()


def test_probe_command_writes_every_variant(tmp_path):
    misalignment_probe.main(["--num-rois", "8", "--out-dir", str(tmp_path), "--sampling-ratio", "1"])
    text = (tmp_path / "misalignment.md").read_text()
    names = list(misalignment_probe.probe_variants())
    assert names == ["pool", "warp", "warp_avg", "align_legacy", "align_max", "align", "align_adaptive"]
    assert all(f"| {name} | " in text for name in names)
    assert "Exact up to float32 rounding: align_max, align, align_adaptive (largest" in text
    record = json.loads((tmp_path / "misalignment.json").read_text())
    assert record["sampling_ratio"]["warp"] == 1 and record["sampling_ratio"]["pool"] == 0, "override, not pool"
    assert record["errors"]["pool"]["32"]["mean"] > 1.0
    assert (tmp_path / "figures" / "misalignment.png").read_bytes()[:4] == b"\x89PNG"
