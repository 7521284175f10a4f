"""Shared fixtures: composing the Hydra configs the way train.py does, shrunk for tests.

hydra and maskrcnn are imported inside the fixture, so that the tests that need neither (the op tests) collect
and run where hydra is not installed.

Under pytest-xdist (``make test`` runs one worker per core, at most 4) each worker, and every process it starts,
gets its share of the cores: on 2 cores two smoke trainings of 2 torch threads each, side by side, took longer
than one after the other (25.6 s against 22.6 s), and of 1 thread each 14.1 s. The kernel tests (``all_cores``)
still run at every core, so that the ops' parallel paths and the thread-count checks see more than one thread.
"""

import contextlib
import os

import pytest

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    # Before any test module imports torch, which reads it, as do the processes the tests start.
    os.environ["OMP_NUM_THREADS"] = str(max(1, CORES // WORKERS))


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def deterministic_algorithms(on: bool):
    """``torch.use_deterministic_algorithms(on)`` inside the block; the previous mode and warn_only after it."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


@pytest.fixture
def all_cores():
    """torch at one thread per core for the test, as a plain ``pytest`` run has it, whatever the worker's share."""
    with torch_threads(CORES):
        yield


@pytest.fixture
def compose_cfg():
    """compose_cfg(config_name, overrides, **compose_kwargs) -> DictConfig, without running Hydra's app."""
    from maskrcnn.config import compose_config

    return compose_config


# Non-contiguous class ids, as a user's COCO export has them: predictions must carry the id, not the label.
SMOKE_CLASSES = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 9, "name": "triangle"}]


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """An untrained smoke-size detector (r18_fpn, 128 px, roi=align with our op, SMOKE_CLASSES) saved as train.py
    saves it; at most 5 detections an image, so that pasting masks at 3000x2000 stays cheap."""
    import torch

    from maskrcnn.config import compose_config
    from maskrcnn.lightning_module import CHECKPOINT_FORMAT
    from maskrcnn.training import build_module

    root = tmp_path_factory.mktemp("untrained_checkpoint")
    cfg = compose_config("train", ["experiment=smoke", f"paths.output_dir={root}",
                                   "model.roi_heads.detections_per_img=5"])  # fmt: skip
    torch.manual_seed(0)
    module = build_module(cfg, SMOKE_CLASSES)
    path = root / "last.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "checkpoint_format": CHECKPOINT_FORMAT}, path)  # fmt: skip
    return path
