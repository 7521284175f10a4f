"""Bad numbers: a NaN injected through a poisoned input image, handled by train.nonfinite=abort|skip."""

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, Dataset

from maskrcnn.callbacks import nonfinite
from maskrcnn.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError
from maskrcnn.data.datamodule import collate
from maskrcnn.lightning_module import DetectorModule
from maskrcnn.training import build_module


class PoisonedImages(Dataset):
    """The training set with NaN pixels in the images of `poisoned_ids`."""

    def __init__(self, dataset: Dataset, poisoned_ids: set[int]) -> None:
        self.dataset, self.poisoned_ids = dataset, poisoned_ids

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        if target["image_id"] in self.poisoned_ids:
            image = image.clone()
            image[:, 10:20, 10:20] = float("nan")
        return image, target


class StateAfterEachStep(pl.Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.states.append(copy.deepcopy(pl_module.model.state_dict()))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(config dict, train dataset) of experiment=smoke."""
    from maskrcnn.config import compose_config

    data_dir = tmp_path_factory.mktemp("data")
    cfg = compose_config("train", ["experiment=smoke", f"paths.data_dir={data_dir}", f"paths.output_dir={data_dir}"])
    datamodule = instantiate(cfg.data.module)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cfg, datamodule.train_dataset


def _fit(smoke, policy: str) -> tuple[DetectorModule, NonFiniteGuard, StateAfterEachStep]:
    """Trains 3 steps of 2 images; the images of the second batch are poisoned."""
    cfg, dataset = smoke
    batches = [[0, 1], [2, 3], [4, 5]]
    poisoned = {int(dataset.image_ids[i]) for i in batches[1]}
    loader = DataLoader(PoisonedImages(dataset, poisoned), batch_sampler=batches, collate_fn=collate)
    pl.seed_everything(0)
    module, guard, states = build_module(cfg, dataset.classes), NonFiniteGuard(policy), StateAfterEachStep()
    trainer = pl.Trainer(
        max_steps=len(batches),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[guard, states],
    )
    trainer.fit(module, train_dataloaders=loader)
    return module, guard, states


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_abort_names_the_step_losses_and_images(smoke):
    cfg, dataset = smoke
    with pytest.raises(NonFiniteLossError) as error:
        _fit(smoke, "abort")
    message = str(error.value)
    ids = [int(dataset.image_ids[i]) for i in (2, 3)]
    assert f"batch image ids {ids}" in message and "at step 1" in message
    for name in ("loss_objectness", "loss_classifier", "loss_mask"):
        assert f"{name}=" in message
    assert "train.nonfinite=skip" in message


def test_skip_leaves_weights_and_batchnorm_statistics_untouched_and_goes_on(smoke):
    module, guard, states = _fit(smoke, "skip")
    assert guard.skipped_steps == 1 and module.global_step == 3
    assert len(states.states) == 3 and all(_all_finite(s) for s in states.states)
    before, after_poison, after_next = states.states
    for name, tensor in before.items():
        assert torch.equal(tensor, after_poison[name]), f"the skipped step changed {name}"
    assert any(not torch.equal(before[k], after_next[k]) for k in before), "training goes on after the skip"


def test_infinite_gradient_with_a_finite_loss_is_detected():
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    loss = torch.sqrt(layer(torch.ones(1, 1))).sum()  # sqrt(0): loss 0, derivative inf
    loss.backward()
    assert math.isfinite(loss.item())
    assert not nonfinite.gradients_finite(layer)
    layer.zero_grad()
    layer(torch.ones(1, 1)).sum().backward()
    assert nonfinite.gradients_finite(layer)
