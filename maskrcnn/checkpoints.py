"""Checkpoint files: atomic writes, a periodic last.ckpt, and safe reads with errors that name the file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<name>.tmp-<pid>` next to the target, fsyncs it, then renames it over the target.

    Lightning's own save goes through a temporary file in the system temp dir and `shutil.move`, which
    falls back to a non-atomic copy when the run dir is on another filesystem (the usual cluster setup),
    and never fsyncs. A rename within one directory is atomic on POSIX filesystems, so a kill at any point
    leaves the previous checkpoint intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)


class LastCheckpoint(Checkpoint):
    """Keeps `<dirpath>/last.ckpt` current: every `every_n_steps` optimizer steps, at the last step, and after
    every validation (again, if the step was just saved: resuming from the pre-validation state would make
    Lightning skip that validation). A killed run loses at most `every_n_steps` steps.

    Not at on_train_end: by then Lightning has advanced its epoch counter but not its batch counter, a
    state it would resume from at the wrong batch. The loggers are flushed before each save. Lightning
    writes a step's scalars after the callbacks' on_train_batch_end, so the scalars of the step a
    checkpoint is taken at can still be lost with a kill right after it."""

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"train.checkpoint_every_n_steps must be >= 1, got {every_n_steps}")
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps
        self._saved: tuple[int, str] | None = None  # (global step, "batch" | "validation")

    def _save(self, trainer: pl.Trainer, when: str) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self._saved == (trainer.global_step, when):
            return
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved = (trainer.global_step, when)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 or 0 < trainer.max_steps <= step:
            self._save(trainer, "batch")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, "validation")


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be loaded safely: not torch.save's, truncated, or carrying code."""


_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")  # a zip archive (torch >= 1.6), or a legacy pickle


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint", *, mmap: bool = False) -> Any:
    """torch.load with weights_only=True (tensors and plain containers only), errors that name the file.

    what: how the error messages call the file ("checkpoint", "model.backbone.weights", ...).
    mmap=True reads the metadata without loading the tensors (cheap, for a peek at the step or config).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    with open(path, "rb") as f:
        head = f.read(64)
    if path.suffix == ".pkl" and not head.startswith(_TORCH_SAVE_MAGIC[0]):
        raise CheckpointError(
            f"{path}: this {what} is a .pkl file, the format of Detectron / detectron2 (Caffe2-style pickles of numpy "
            "arrays with their own key names), not a file written by torch.save. Convert it to a torchvision "
            "state_dict first, or use a torchvision .pth file."
        )
    if not head.startswith(_TORCH_SAVE_MAGIC):
        kind = "empty" if not head else f"it starts with {head[:24]!r}"
        raise CheckpointError(f"{path}: not a {what} written by torch.save, nor a pickle ({kind})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load this {what}. It holds pickled objects other than tensors and plain containers, "
            "which could run arbitrary code (torch.load(weights_only=True) rejected it). Only load checkpoints "
            f"from sources you trust with other tools. Details: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable {what} (truncated or corrupt?): {e}") from e


def read_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """A training checkpoint (a dict) via `load_torch_file`."""
    checkpoint = load_torch_file(path, "checkpoint", mmap=mmap)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint: {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint
