"""Torch-side BatchNorm folding, with randomised BN statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.factories import conv13d, conv_bn, randomize_bn
from vqz_edge.export.torch_side import fold_batchnorm_torch


def _bn_count(m: nn.Module) -> int:
    return sum(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())


def test_random_stats_are_not_identity() -> None:
    bn = randomize_bn(nn.Sequential(nn.BatchNorm2d(4)))[0]
    x = torch.randn(2, 4, 3, 3)
    assert (bn(x) - x).abs().max() > 0.1, "randomised BN must not be an identity, or folding tests prove nothing"


def test_fold_conv_family_matches_unfolded() -> None:
    model = conv_bn()
    ref = copy.deepcopy(model)
    x = torch.randn(3, 3, 16, 16)
    folded = fold_batchnorm_torch(model, x)
    names = dict(folded)
    # stem/dw via Sequential; grouped conv, transposed conv, Linear+BN1d via FX
    assert names["stem.0"] == "stem.1" and names["dw.0"] == "dw.1"
    assert names["grouped"] == "grouped_bn" and names["up"] == "up_bn" and names["fc"] == "fc_bn"
    # grouped ConvTranspose is left to the ONNX pass (torch's fuser scales the wrong axis there)
    assert "up_grouped" not in names
    assert _bn_count(model) == 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_fold_conv1d_conv3d() -> None:
    model = conv13d()
    ref = copy.deepcopy(model)
    x1, x3 = torch.randn(2, 4, 10), torch.randn(2, 2, 5, 5, 5)
    folded = fold_batchnorm_torch(model, (x1, x3))
    assert sorted(folded) == [("c1.0", "c1.1"), ("c3.0", "c3.1")]
    assert _bn_count(model) == 0
    with torch.no_grad():
        for a, b in zip(model(x1, x3), ref(x1, x3)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_linear_bn_on_sequence_axis_is_not_folded() -> None:
    class SeqLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 5)
            self.bn = nn.BatchNorm1d(4)  # normalises the sequence axis (L=4), not Linear's features

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.fc(x))

    model = randomize_bn(SeqLinear())
    ref = copy.deepcopy(model)
    x = torch.randn(2, 4, 6)
    assert fold_batchnorm_torch(model, x) == []
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


@pytest.mark.parametrize("shared", [True])
def test_shared_conv_is_not_folded(shared: bool) -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) + self.conv(x)

    model = randomize_bn(Shared())
    assert fold_batchnorm_torch(model, torch.randn(1, 3, 4, 4)) == []
