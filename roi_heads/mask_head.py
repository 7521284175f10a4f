"""Mask heads (RoI feature -> mask feature) and the per-class mask predictor."""

from __future__ import annotations

from torch import Tensor, nn


class MaskConvHead(nn.Sequential):
    """3x3 conv + ReLU stack (the FPN / C5 mask head): [P, C, S, S] -> [P, dims[-1], S, S]."""

    def __init__(self, in_channels: int, dims: list[int]) -> None:
        layers: list[nn.Module] = []
        for dim in dims:
            conv = nn.Conv2d(in_channels, dim, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_channels = dim
        super().__init__(*layers)
        self.out_channels = in_channels


class MaskPredictor(nn.Module):
    """2x deconvolution, then one mask logit map per class: [P, C, S, S] -> [P, K+1, 2S, 2S]."""

    def __init__(self, in_channels: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, dim, kernel_size=2, stride=2)
        self.logits = nn.Conv2d(dim, num_classes + 1, kernel_size=1)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.logits.weight, std=0.001)  # start near p=0.5 everywhere
        for layer in (self.deconv, self.logits):
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.deconv(x).relu())
