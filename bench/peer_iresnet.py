"""The PyTorch peer of bench_peer.py and gpu_peer.py: an IR-ResNet built the way arcface_torch's
backbones/iresnet.py builds it, and a worker that times its training and inference steps.

This file runs only in an interpreter that has torch (the side venv of tests/torch_side.py, or a GPU machine's own
Python); it imports nothing of the project, so torch never becomes one of its requirements.

Network (arcface_torch's IResNet with IBasicBlock):
* stem: conv 3x3/1 (64, no bias) -> BatchNorm2d -> PReLU(64);
* four stages (64, 128, 256, 512 channels), stride 2 in the first block of each;
* block: BN -> conv 3x3/1 -> BN -> PReLU -> conv 3x3/stride -> BN, plus the input, or conv 1x1/stride + BN
  ("downsample") where the shape changes;
* output: BN2d -> dropout -> flatten (NCHW) -> Linear(512 x 7 x 7, 512) -> BatchNorm1d whose weight is frozen at 1.

`downsample_first_stage=False` replaces the first stage's downsample (64 -> 64 channels, stride 2) by a strided
subsample without weights, which is what the seed's LResNet50E-IR does: the two networks then have the same
structure and the same weight count. arcface_torch keeps the downsample (True).

    python bench/peer_iresnet.py SPEC.json OUT.json    # the worker: SPEC says what to time, OUT gets the figures
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from call_timing import time_calls  # bench/, this script's folder, is first on the module path

log = logging.getLogger("peer_iresnet")
STAGE_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
STAGE_CHANNELS = (64, 128, 256, 512)
BN_EPSILON = 1e-5  # arcface_torch's
ARCFACE_SCALE, ARCFACE_MARGIN = 64.0, 0.5
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class Subsample(nn.Module):
    """The seed's 1x1 max-pool with stride 2: every second row and column, no weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2, ::2]


class IRBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPSILON)
        self.conv1 = conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPSILON)
        self.prelu = nn.PReLU(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPSILON)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return residual + (x if self.shortcut is None else self.shortcut(x))


class IResNet(nn.Module):
    def __init__(self, depth: int, image_size: int = 112, embedding_size: int = 512, dropout: float = 0.0,
                 downsample_first_stage: bool = True) -> None:
        super().__init__()
        if depth not in STAGE_UNITS:
            raise ValueError(f"IResNet: depth {depth!r}; expected one of {sorted(STAGE_UNITS)}")
        if image_size % 16:
            raise ValueError(f"IResNet: image_size {image_size!r}; expected a multiple of 16")
        self.stem = nn.Sequential(conv3x3(3, 64), nn.BatchNorm2d(64, eps=BN_EPSILON), nn.PReLU(64))
        blocks, channels_in = [], 64
        for stage, (units, channels) in enumerate(zip(STAGE_UNITS[depth], STAGE_CHANNELS)):
            for unit in range(units):
                stride = 2 if unit == 0 else 1
                blocks.append(IRBlock(channels_in, channels, stride,
                                      self._shortcut(channels_in, channels, stride, downsample_first_stage or stage)))
                channels_in = channels
        self.blocks = nn.Sequential(*blocks)
        self.bn2 = nn.BatchNorm2d(512, eps=BN_EPSILON)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * (image_size // 16) ** 2, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPSILON)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    @staticmethod
    def _shortcut(channels_in: int, channels: int, stride: int, project: bool) -> nn.Module | None:
        if stride == 1 and channels_in == channels:
            return None
        if channels_in == channels and not project:
            return Subsample()
        return nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride=stride, bias=False),
                             nn.BatchNorm2d(channels, eps=BN_EPSILON))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.bn2(self.blocks(self.stem(x))))
        return self.features(self.fc(torch.flatten(x, 1)).float())


class ArcFaceHead(nn.Module):
    """cos(theta + m) on the target class, s = 64, m = 0.5, then softmax cross-entropy (arcface_torch's
    CombinedMarginLoss with (1, 0.5, 0) on a full FC, no partial sampling)."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.normal(0, 0.01, (num_classes, embedding_size)))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = nn.functional.linear(nn.functional.normalize(embeddings), nn.functional.normalize(self.weight))
        cosine = cosine.float().clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cosine.gather(1, labels[:, None])) + ARCFACE_MARGIN)
        logits = cosine.scatter(1, labels[:, None], target) * ARCFACE_SCALE
        return nn.functional.cross_entropy(logits, labels)


def parameter_count(model: nn.Module) -> int:
    """Every weight, frozen ones included, without BN running statistics (Keras counts those as weights)."""
    return sum(p.numel() for p in model.parameters())


def _autocast(device: str, precision: str):
    dtype = DTYPES[precision]
    return torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None)


def _synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def training_call(model: nn.Module, head: ArcFaceHead, device: str, precision: str, batch: int, image_size: int,
                  num_classes: int, channels_last: bool) -> Callable[[], None]:
    """One forward + backward + SGD (momentum 0.9, weight decay 5e-4) step of backbone and head on fixed inputs."""
    model.train()
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.001, momentum=0.9,
                                weight_decay=5e-4)
    images = _images(batch, image_size, device, channels_last)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loss = head(model(images), labels)
        loss.backward()
        optimizer.step()
        loss.item()  # waits for the device
    return step


def inference_call(model: nn.Module, device: str, precision: str, batch: int, image_size: int,
                   channels_last: bool) -> Callable[[], None]:
    images = _images(batch, image_size, device, channels_last)

    def forward() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(device, precision):
            model(images)
        _synchronise(device)
    return forward


def _images(batch: int, image_size: int, device: str, channels_last: bool) -> torch.Tensor:
    images = torch.rand(batch, 3, image_size, image_size, device=device) * 2 - 1
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def measure(spec: dict) -> dict:
    """The figures of `spec` (keys: see bench_peer.torch_spec); images/s per (mode, precision, batch)."""
    torch.manual_seed(0)
    device = spec["device"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # arcface_torch's setting: cuDNN picks the fastest algorithms
    else:
        torch.set_flush_denormal(True)  # TensorFlow flushes denormals to zero in its CPU threads: the same here
    model = IResNet(spec["depth"], spec["image_size"], dropout=spec["dropout"],
                    downsample_first_stage=spec["downsample_first_stage"]).to(device)
    head = ArcFaceHead(512, spec["num_classes"]).to(device)
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    rows = []
    for precision in spec["precisions"]:
        for mode, batches in (("inference", spec["inference_batch_sizes"]), ("training", spec["train_batch_sizes"])):
            for batch in batches:
                call = (inference_call(model, device, precision, batch, spec["image_size"], spec["channels_last"])
                        if mode == "inference" else
                        training_call(model, head, device, precision, batch, spec["image_size"], spec["num_classes"],
                                      spec["channels_last"]))
                timing = time_calls(call, spec["warmup_steps"], spec["steps"], spec["repeats"],
                                    spec["seconds_per_config"])
                rows.append({"mode": mode, "precision": precision, "batch": batch,
                             "images_per_second": batch / timing.seconds,
                             "median_images_per_second": batch / timing.median_seconds})
                log.info("torch %s %s batch %d: %.2f img/s", mode, precision, batch, batch / timing.seconds)
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "parameters": parameter_count(model), "head_parameters": parameter_count(head),
            "onednn": torch.backends.mkldnn.is_available(), "results": rows}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise ValueError("usage: peer_iresnet.py SPEC.json OUT.json")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(measure(spec), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
