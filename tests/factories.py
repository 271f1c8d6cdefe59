"""Small torch models for tests (importable as ``tests.factories:NAME`` by the CLI)."""

from __future__ import annotations

import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine params: a fold checked against default stats proves nothing."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2.0 + 0.1)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.grouped = nn.Conv2d(8, 16, 1, groups=2)
        self.grouped_bn = nn.BatchNorm2d(16)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.up_bn = nn.BatchNorm2d(8)
        self.up_grouped = nn.ConvTranspose2d(8, 8, 3, padding=1, groups=2)
        self.up_grouped_bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 12)
        self.fc_bn = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.stem(x))
        x = torch.relu(self.grouped_bn(self.grouped(x)))
        x = self.up_bn(self.up(x))
        x = self.up_grouped_bn(self.up_grouped(x))
        x = self.pool(x).flatten(1)
        return self.head(torch.relu(self.fc_bn(self.fc(x))))


def conv_bn() -> nn.Module:
    return randomize_bn(ConvBN(), seed=1)


class Conv13D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6))
        self.c3 = nn.Sequential(nn.Conv3d(2, 5, 3), nn.BatchNorm3d(5))

    def forward(self, x1: torch.Tensor, x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.c1(x1), self.c3(x3)


def conv13d() -> nn.Module:
    return randomize_bn(Conv13D(), seed=2)


def raises() -> nn.Module:
    raise RuntimeError("factory failed on purpose")


def not_a_module() -> object:
    return 42


def nan_weights() -> nn.Module:
    """conv_bn with one NaN in the stem's conv weight (a diverged or corrupt checkpoint)."""
    model = conv_bn()
    with torch.no_grad():
        model.stem[0].weight[0, 0, 0, 0] = float("nan")
    return model


def inf_after_fold() -> nn.Module:
    """Finite weights, but a BatchNorm with zero variance and eps 0: the model itself outputs NaN/Inf."""
    model = conv_bn()
    bn = model.stem[1]
    bn.eps = 0.0
    bn.running_var.zero_()
    return model
