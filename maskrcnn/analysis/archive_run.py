"""Copy finished runs into the repository: metrics, configs, log and slimmed TensorBoard events, no checkpoints.

    python -m maskrcnn.analysis.archive_run RUN_DIR [RUN_DIR ...] DEST

Each RUN_DIR becomes DEST/<its name>/ with: metrics.json, .hydra/*.yaml, train.log (if present),
tensorboard/hparams.yaml and every tensorboard/**/events.out.tfevents.* file rewritten under the same name with
its scalar, hparams and PR-curve summaries only. The validation pictures (about 1 MB a run) and any other summaries
(histograms, graphs) are dropped; file-version and session-log events stay, since TensorBoard's purge of a
resumed run's stale steps relies on them. Kept events are copied byte for byte.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

KEPT_PLUGINS = ("scalars", "hparams", "pr_curves")  # a PR curve is 6 x 101 floats
STRUCTURAL = ("file_version", "session_log")  # events that are not summaries but that TensorBoard reads


class ArchiveError(ValueError):
    """A run that cannot be archived (unfinished, or already archived); the message names the directory."""


def _keep(value: Summary.Value) -> bool:
    # torch's SummaryWriter writes scalars as simple_value; TensorBoard-native writers as "scalars" tensors.
    return value.HasField("simple_value") or value.metadata.plugin_data.plugin_name in KEPT_PLUGINS


def slim_events(src: Path, dst: Path) -> tuple[int, int]:
    """Rewrites the event file `src` to `dst` with scalars, hparams and PR curves only; returns (events kept, dropped).

    RawEventFileLoader, not EventFileLoader: the latter upgrades legacy summaries (simple_value -> tensor), which
    would change the bytes of every scalar.
    """
    kept = dropped = 0
    with open(dst, "wb") as f:
        writer = RecordWriter(f)
        for record in RawEventFileLoader(str(src)).Load():
            event = Event.FromString(record)
            kind = event.WhichOneof("what")
            if kind in STRUCTURAL:
                writer.write(record)
                kept += 1
            elif kind == "summary":
                values = [v for v in event.summary.value if _keep(v)]
                if len(values) == len(event.summary.value):
                    writer.write(record)
                elif values:  # a summary mixing kinds: keep its scalars
                    del event.summary.value[:]
                    event.summary.value.extend(values)
                    writer.write(event.SerializeToString())
                kept += bool(values)
                dropped += not values
            else:
                dropped += 1
    return kept, dropped


def check(run_dir: Path, dest: Path) -> Path:
    """dest/<run_dir.name>, after making sure that `run_dir` is a finished run not archived there yet."""
    if not (run_dir / "metrics.json").is_file():
        raise ArchiveError(f"{run_dir}: no metrics.json, so not a finished train.py run; nothing archived")
    target = dest / run_dir.name
    if target.exists():
        raise ArchiveError(f"{target} already exists; remove it first to archive {run_dir} again")
    return target


def archive(run_dir: Path, dest: Path) -> Path:
    """Copies `run_dir` into dest/<run_dir.name> (see the module docstring); returns that directory."""
    target = check(run_dir, dest)
    # Built beside the target and renamed at the end, so an interrupted copy never looks like an archived run.
    tmp = dest / f".{run_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files = [run_dir / "metrics.json", *sorted((run_dir / ".hydra").glob("*.yaml")), run_dir / "train.log",
                 run_dir / "tensorboard" / "hparams.yaml"]
        for src in (f for f in files if f.is_file()):
            (tmp / src.relative_to(run_dir)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / src.relative_to(run_dir))
        for src in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
            out = tmp / src.relative_to(run_dir)
            out.parent.mkdir(parents=True, exist_ok=True)
            kept, dropped = slim_events(src, out)
            print(f"  {src.relative_to(run_dir)}: {src.stat().st_size:,} -> {out.stat().st_size:,} bytes "
                  f"({kept} events kept, {dropped} dropped)")
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with metrics.json)")
    parser.add_argument("dest", type=Path, help="folder to archive them into, e.g. results/gap_shapes_c4/runs")
    args = parser.parse_args(argv)
    try:
        for run in args.runs:  # all checked before anything is copied
            check(run, args.dest)
    except ArchiveError as e:
        parser.exit(2, f"archive_run: error: {e}\n")
    args.dest.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        print(f"{run} -> {archive(run, args.dest)}")


if __name__ == "__main__":
    main()
