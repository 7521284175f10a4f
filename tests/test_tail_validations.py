"""A setting fixed before its runs (issue 24): validations at given steps, the metric as the mean of the last
ones, a convergence verdict from training signals, and the commit that trained each run; all of it surviving a
resume, and read by the gap report."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from maskrcnn.callbacks.convergence import ConvergenceCheck
from maskrcnn.runinfo import code_version
from maskrcnn.training import tail_mean, train
from tests.conftest import deterministic_algorithms

REPO = Path(__file__).resolve().parents[1]
RULE = "train.convergence={window: 2, max_classifier_loss: 10.0, max_tail_range: 100.0}"


def _overrides(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """experiment=smoke, 6 steps, validations after steps 2, 4 and 6, lr decay at 5: the loss window is 4-5."""
    return ["experiment=smoke", f"paths.data_dir={data_dir}", f"paths.output_dir={out}", "train.deterministic=true",
            "trainer.max_steps=6", "trainer.val_check_interval=6", "train.val_steps=[2,4]", "train.report_tail=2",
            "optim.steps=[5]", "train.vis_images=0", "data.module.val_batch_size=8", RULE, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A straight 6-step run, and the same run stopped after step 4 and resumed to 6."""
    from maskrcnn.config import compose_config

    data = tmp_path_factory.mktemp("data")
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    with deterministic_algorithms(False):  # train.deterministic=true turns it on for the whole process: undo after
        train(compose_config("train", _overrides(data, straight)))
        train(compose_config("train", _overrides(data, resumed, "trainer.max_steps=4")))
        train(compose_config("train", _overrides(data, resumed, "ckpt_path=last")))
    return json.loads((straight / "metrics.json").read_text()), json.loads((resumed / "metrics.json").read_text())


def test_validations_at_the_given_steps_and_the_tail_mean(runs):
    metrics, _ = runs
    assert [v["step"] for v in metrics["validations"]] == [2, 4, 6]
    assert metrics["tail"]["n"] == 2 and metrics["tail"]["steps"] == [4, 6]
    for key in ("segm/AP", "bbox/AP75"):
        assert metrics["tail"]["metrics"][key] == pytest.approx(
            (metrics["validations"][1][key] + metrics["validations"][2][key]) / 2)
        assert metrics[key] == metrics["validations"][2][key], "the flat keys stay the final validation's"


def test_the_verdict_is_judged_from_the_classifier_loss_before_the_decay_and_the_tail(runs):
    verdict = runs[0]["convergence"]
    assert verdict["classifier_loss_steps"] == [4, 5] and verdict["tail_steps"] == [4, 6]
    assert 0 < verdict["classifier_loss"] < 10 and verdict["met"] is True


def test_a_resumed_run_keeps_its_validations_and_its_loss_window(runs):
    """Stopped after step 4 (inside the loss window 4-5, after two validations), resumed to 6: the same record."""
    straight, resumed = runs
    for key in ("validations", "tail", "convergence"):
        assert resumed[key] == straight[key], key


def test_every_run_records_the_commit_of_the_checkout_that_trained_it(runs):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    metrics = runs[0]
    assert metrics["git_commit"] == head and isinstance(metrics["git_dirty"], bool) and metrics["git_note"] is None


def test_outside_a_git_checkout_the_commit_is_null_with_a_reason(tmp_path):
    copy = tmp_path / "site" / "maskrcnn" / "runinfo.py"
    copy.parent.mkdir(parents=True)
    shutil.copy(REPO / "maskrcnn" / "runinfo.py", copy)
    version = code_version(copy)
    assert version["git_commit"] is None and version["git_dirty"] is None
    assert "is not a git checkout" in version["git_note"]


def test_the_verdict_fails_on_either_signal():
    check = ConvergenceCheck(decay_step=10, window=3, max_classifier_loss=0.3, max_tail_range=1.0, tail=2)
    check.losses = {8: 0.2, 9: 0.3, 10: 0.31}
    flat = [{"step": 20, "segm/AP": 0.500}, {"step": 30, "segm/AP": 0.505}]
    assert check.verdict(flat)["met"] is True  # loss 0.27, tail range 0.5 points
    moving = [{"step": 20, "segm/AP": 0.50}, {"step": 30, "segm/AP": 0.52}]
    assert check.verdict(moving)["met"] is False and check.verdict(moving)["tail_mask_ap_range"] == pytest.approx(2)
    check.losses[10] = 0.5
    assert check.verdict(flat)["met"] is False, "mean loss 0.33 > 0.3"
    del check.losses[8]
    assert check.verdict(flat)["classifier_loss"] is None and check.verdict(flat)["met"] is False, "missing steps"


def test_tail_mean_of_fewer_validations_than_asked():
    validations = [{"step": 5, "segm/AP": 0.2}]
    assert tail_mean(validations, 3) == {"n": 1, "steps": [5], "metrics": {"segm/AP": 0.2}}
    assert tail_mean([], 3) is None


def test_the_report_uses_the_tail_mean_marks_verdicts_and_names_commits(runs, tmp_path):
    from maskrcnn.analysis import gap_report
    from maskrcnn.analysis.gap_runs import load_runs

    straight, resumed = runs
    for name, metrics in (("straight", straight), ("resumed", resumed)):
        run = tmp_path / "runs" / name
        (run / ".hydra").mkdir(parents=True)
        seed = 0 if name == "straight" else 1
        roi = "align" if name == "straight" else "pool"
        (run / "metrics.json").write_text(json.dumps({**metrics, "seed": seed, "roi": roi}))
        config = {"model": {"name": "r18_fpn", "backbone": {"features": "fpn"}}, "data": {"module": {"batch_size": 2}},
                  "optim": {"lr": 0.01, "steps": [5], "gamma": 0.1}, "train": {"report_tail": 2}}  # fmt: skip
        (run / ".hydra" / "config.yaml").write_text(json.dumps(config))
    records = load_runs([tmp_path / "runs"])
    by_roi = {r["roi"]: r for r in records}
    assert by_roi["align"]["metrics"] == {k: straight["tail"]["metrics"][k] for k in by_roi["align"]["metrics"]}
    assert by_roi["align"]["final_metrics"] == {k: straight[k] for k in by_roi["align"]["final_metrics"]}
    assert by_roi["align"]["tail_steps"] == [4, 6] and by_roi["align"]["git_commit"] == straight["git_commit"]
    assert "mean of the last 2 validations" in records[0]["setting"]
    assert by_roi["align"]["convergence"] == straight["convergence"]
    gap_report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report" / "roi_gap.md").read_text()
    assert "| final mask AP | converged |" in table and "| 1/1 |" in table
    assert f"`{straight['git_commit'][:12]}`: 2 runs" in table
