"""ResNet backbones from torchvision: FPN, C4 (res2-res4, res5 kept for the RoI head) or C5."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d

from maskrcnn.checkpoints import load_torch_file

FEATURES = ("fpn", "c4", "c5")
NORMS = {"bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}
STAGES = ["conv1", "layer1", "layer2", "layer3", "layer4"]


@dataclass
class Backbone:
    """A feature extractor plus what the heads need to know about it.

    body: image batch [N, 3, H, W] -> feature dict {name: [N, C, H/s, W/s]} (or one tensor for C4/C5).
    featmap_names / strides: the maps the RoI heads pool from, finest first.
    out_channels: C of those maps. res5: ResNet's last stage for the C4 RoI head (None otherwise).
    """

    body: nn.Module
    featmap_names: list[str]
    strides: list[int]
    out_channels: int
    res5: nn.Module | None = None


def build_resnet(arch: str, weights: str | None, norm: str) -> nn.Module:
    """A torchvision ResNet: random (weights=None), from a local file, or with ImageNet weights by name."""
    if norm not in NORMS:
        raise ValueError(f"model.backbone.norm={norm!r} is not one of {', '.join(NORMS)}")
    try:
        factory = getattr(torchvision.models, arch)
    except AttributeError:
        raise ValueError(
            f"model.backbone.arch={arch!r} is not a torchvision ResNet (e.g. resnet18, resnet50)"
        ) from None
    if weights is None:
        return factory(weights=None, norm_layer=NORMS[norm])
    if _is_path(str(weights)):
        resnet = factory(weights=None, norm_layer=NORMS[norm])
        _load_file(resnet, Path(str(weights)).expanduser(), arch)
        return resnet
    named = _named_weights(arch, str(weights))
    try:
        return factory(weights=named, norm_layer=NORMS[norm])
    except URLError as e:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(named.url).path).name
        raise RuntimeError(
            f"model.backbone.weights={weights!r}: could not download {named.url} ({e.reason}). Offline, put that "
            f"file at {cached} (torchvision looks there first; $TORCH_HOME moves it), or pass a local file: "
            "model.backbone.weights=/path/to/weights.pth"
        ) from e


def _is_path(weights: str) -> bool:
    """A file path (exists, or has a directory part or a suffix) rather than a torchvision weights name."""
    path = Path(weights).expanduser()
    return path.is_file() or "/" in weights or path.suffix in {".pth", ".pt", ".pkl", ".bin", ".ckpt"}


def _named_weights(arch: str, name: str) -> torchvision.models.WeightsEnum:
    """'IMAGENET1K_V1', 'DEFAULT' or 'ResNet50_Weights.IMAGENET1K_V1' -> the torchvision weights enum."""
    enum = torchvision.models.get_model_weights(arch)
    member = name.removeprefix(f"{enum.__name__}.")
    if member == "DEFAULT":
        return enum.DEFAULT
    if member not in enum.__members__:
        raise ValueError(
            f"model.backbone.weights={name!r} is neither a file nor a weights name of {arch} "
            f"({', '.join([*enum.__members__, 'DEFAULT'])}); a local file needs its path, e.g. /path/to/{arch}.pth"
        )
    return enum[member]


def _load_file(resnet: nn.Module, path: Path, arch: str) -> None:
    state = load_torch_file(path, "model.backbone.weights")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"model.backbone.weights: {path} does not hold a state_dict (a dict of tensors)")
    try:
        missing, unexpected = resnet.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"model.backbone.weights: {path} does not fit {arch}: {e}") from e
    if [k for k in missing if not k.startswith("fc.")] or unexpected:
        raise ValueError(
            f"model.backbone.weights: {path} does not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def freeze_stages(resnet: nn.Module, trainable_layers: int) -> None:
    """Freeze all but the last `trainable_layers` of conv1, layer1..layer4 (5 = train everything)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"model.backbone.trainable_layers must be in [0, 5], got {trainable_layers}")
    frozen = set(STAGES[: len(STAGES) - trainable_layers])
    for name, param in resnet.named_parameters():
        stage = "conv1" if name.startswith(("conv1", "bn1")) else name.split(".")[0]
        if stage in frozen:
            param.requires_grad_(False)


def build_backbone(
    arch: str,
    features: str,
    weights: str | None = None,
    norm: str = "bn",
    trainable_layers: int = 5,
    fpn_channels: int = 256,
) -> Backbone:
    """A `model.backbone` config's backbone. features: "fpn" (P2-P5, strides 4-32), "c4" (res2-res4 at
    stride 16, res5 kept as the RoI head) or "c5" (res2-res5 at stride 32)."""
    if features not in FEATURES:
        raise ValueError(f"model.backbone.features={features!r} is not one of {', '.join(FEATURES)}")
    resnet = build_resnet(arch, weights, norm)
    freeze_stages(resnet, trainable_layers)
    c5 = resnet.fc.in_features
    stem = [
        resnet.conv1,
        resnet.bn1,
        resnet.relu,
        resnet.maxpool,
        resnet.layer1,
        resnet.layer2,
        resnet.layer3,
    ]
    if features == "fpn":
        channels = [c5 // 8, c5 // 4, c5 // 2, c5]
        body = BackboneWithFPN(resnet, {f"layer{i + 1}": str(i) for i in range(4)}, channels, fpn_channels)
        return Backbone(body, ["0", "1", "2", "3"], [4, 8, 16, 32], fpn_channels)
    if features == "c4":
        return Backbone(nn.Sequential(*stem), ["0"], [16], c5 // 2, res5=resnet.layer4)
    return Backbone(nn.Sequential(*stem, resnet.layer4), ["0"], [32], c5)
