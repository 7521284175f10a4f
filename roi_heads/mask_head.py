"""Mask heads (RoI feature -> mask feature) and the per-class mask predictor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    """2x deconvolution, ReLU, then one mask logit map per class: [P, C, S, S] -> [P, K+1, 2S, 2S].

    Parameters (and state_dict keys) are those of ConvTranspose2d(C, D, 2, stride 2) `deconv` and of
    Conv2d(D, K+1, 1) `logits`; forward computes the same function as two 1x1 convolutions.
    """

    def __init__(self, in_channels: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, dim, kernel_size=2, stride=2)
        self.logits = nn.Conv2d(dim, num_classes + 1, kernel_size=1)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.logits.weight, std=0.001)  # start near p=0.5 everywhere
        for layer in (self.deconv, self.logits):
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x [P, C, S, S] -> [P, K+1, 2S, 2S], equal to logits(relu(deconv(x))) up to float rounding.

        A 2x2 stride-2 transposed conv writes each input pixel to its own 2x2 output block: output pixel
        (2i + a, 2j + b) of channel d is sum_c W[c, d, a, b] x[c, i, j] + bias[d], a 1x1 conv to 4D channels
        (a, b, d) on the S x S map. The 1x1 logits conv follows on each (a, b) block before the blocks are
        interleaved (the pixel shuffle), so that only the small [P, K+1, 2S, 2S] result is reordered. Both 1x1 convs
        run channels-last, where oneDNN takes them as plain matrix products without reorders.

        Why (issue #26, CPU): conv_transpose2d's oneDNN path reorders the NCHW input to NHWC and copies its
        [P, D, 2S, 2S] output out and back to NCHW; the ReLU and the 1x1 conv (after a reorder to a blocked layout)
        pass over that 4x-upsampled map again. Those passes cost more than the arithmetic. (The same products as
        torch.bmm go to MKL, which is slower than oneDNN on AMD CPUs.)
        """
        num, channels, height, width = x.shape
        dim, classes = self.deconv.out_channels, self.logits.out_channels
        # W [C, D, 2, 2] -> output channels (a, b, d): [4D, C, 1, 1]
        taps = self.deconv.weight.permute(2, 3, 1, 0).reshape(4 * dim, channels, 1, 1)
        x = x.contiguous(memory_format=torch.channels_last)
        hidden = F.conv2d(x, taps, self.deconv.bias.repeat(4)).relu_()  # [P, 4D, S, S]
        # Pixel (i, j) holds its 2x2 block's 4 x D channels: as [P, S, 4S, D] rows (i, 4j + 2a + b), channels-last.
        hidden = hidden.permute(0, 2, 3, 1).reshape(num, height, 4 * width, dim).permute(0, 3, 1, 2)
        logits = F.conv2d(hidden, self.logits.weight, self.logits.bias)  # [P, K+1, S, 4S]
        # (p, i, j, a, b, k) -> (p, k, i, a, j, b): pixel (2i + a, 2j + b)
        logits = logits.permute(0, 2, 3, 1).reshape(num, height, width, 2, 2, classes).permute(0, 5, 1, 3, 2, 4)
        return logits.reshape(num, classes, 2 * height, 2 * width)
