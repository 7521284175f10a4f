"""Box heads (RoI feature -> vector) and the class/box predictor."""

from __future__ import annotations

from torch import Tensor, nn


class MLPBoxHead(nn.Module):
    """Two fully connected layers (the FPN / C5 box head): [R, C, S, S] -> [R, dim]."""

    def __init__(self, in_channels: int, resolution: int, dim: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution * resolution, dim)
        self.fc7 = nn.Linear(dim, dim)
        self.out_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.fc7(self.fc6(x.flatten(1)).relu()).relu()


class Res5BoxHead(nn.Module):
    """The C4 box head: ResNet's res5 stage on the RoI features, then global average pooling.

    [R, C4, S, S] -> [R, C5]. The same `res5` module is shared with the mask branch (Mask R-CNN, Fig. 4 left).
    """

    def __init__(self, res5: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.res5 = res5
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))


class BoxPredictor(nn.Module):
    """Class scores and class-specific box deltas: [R, dim] -> ([R, K+1], [R, (K+1)*4])."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)
