"""maskrcnn.analysis.pr_curves: PR curves read back from a real event file, and the figure drawn from them."""

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from maskrcnn.analysis import pr_curves


def _write_curves(event_dir, steps):
    recall = np.linspace(1, 0, 101)
    with SummaryWriter(str(event_dir)) as writer:
        for step in steps:
            for tag, precision in (("pr/segm_iou50", 1 - recall / (step + 2)), ("pr/bbox_iou75", 1 - recall)):
                tp = recall * 20
                writer.add_pr_curve_raw(tag, tp, np.zeros(101), np.zeros(101), 20 - tp, precision, recall,
                                        global_step=step, num_thresholds=101)  # fmt: skip
        writer.add_scalar("val/segm_AP", 0.5, steps[-1])
    return recall


def test_reads_the_last_step_by_default_and_any_step_asked_for(tmp_path):
    recall = _write_curves(tmp_path, steps=[10, 20])
    last = pr_curves.read_pr_curves(tmp_path)
    assert set(last) == {"pr/segm_iou50", "pr/bbox_iou75"}
    assert last["pr/segm_iou50"].step == 20
    assert np.allclose(last["pr/segm_iou50"].precision, 1 - recall / 22, atol=1e-6)
    first = pr_curves.read_pr_curves(tmp_path, step=10)["pr/segm_iou50"]
    assert np.allclose(first.precision, 1 - recall / 12, atol=1e-6) and np.allclose(first.recall, recall)
    with pytest.raises(ValueError, match="not logged at step 15"):
        pr_curves.read_pr_curves(tmp_path, step=15)


def test_cli_draws_a_png_and_prints_each_curves_mean(tmp_path, capsys):
    recall = _write_curves(tmp_path / "tb", steps=[5])
    out = tmp_path / "pr.png"
    pr_curves.main([str(tmp_path / "tb"), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"pr/segm_iou50 step 5: mean precision {np.mean(1 - recall / 7):.4f}" in printed


def test_a_folder_without_pr_curves_is_named_in_the_error(tmp_path):
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("val/segm_AP", 0.5, 1)
    with pytest.raises(ValueError, match=f"{tmp_path}.*no pr/"):
        pr_curves.read_pr_curves(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        pr_curves.read_pr_curves(tmp_path / "missing")
