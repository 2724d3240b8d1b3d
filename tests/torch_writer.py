"""Runs inside the PyTorch side venv (tests/torch_side.py), never in ours: writes arcface_torch's files with torch.

    python torch_writer.py SPEC OUT

SPEC is a JSON file: a list of jobs (one torch import for them all), each written into OUT/<its "name">/:
    {"name": ..., "kind": "backbone", "arch": "iresnet18" | "iresnet100" | "mbf", "num_features": 64, "seed": 0,
     "legacy": false, "half": false, "checkpoint": false, "images": 2, "arrays": true}
        A backbone with arcface_torch's module names (so its state_dict keys are the real ones: see insightface's
        recognition/arcface_torch/backbones/iresnet.py and mobilefacenet.py), random weights and BN statistics, saved
        as backbone.pth by torch.save(model.state_dict()) (`legacy`: the pre-1.6 format; `half`: float16 tensors;
        `checkpoint`: arcface_torch's checkpoint_gpu_0.pt dict, the state dict under "state_dict_backbone").
        `arrays`: every tensor as arrays/<key>.npy. `images`: that many random RGB uint8 112x112 faces as
        images.npy and torch's float32 eval-mode forward of (x - 127.5) / 127.5 as embeddings.npy.
    {"name": ..., "kind": "views", "legacy": false}
        views.pth: a dict of tensors that are views (transposed, sliced, offset, strided) of shared storages, and
        arrays/<key>.npy of each as torch reads it.
OUT/<name>/result.json: {"keys": the saved keys in order, "shapes": (backbones) key -> shape, "save_s": seconds
torch.save took}.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


# --- arcface_torch's iresnet, with its module names -----------------------------------------------------------------


class IBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-05))

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    def __init__(self, layers, num_features):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            units = [IBasicBlock(inplanes, planes, 2)] + [IBasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*units))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))


IRESNET_LAYERS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
                  "iresnet100": (3, 13, 30, 3), "iresnet200": (6, 26, 60, 6)}


# --- arcface_torch's mobilefacenet (mbf: blocks (1, 4, 6, 2), scale 2), with its module names -----------------------


class ConvBlock(nn.Module):
    def __init__(self, in_c, out_c, kernel=1, stride=1, padding=0, groups=1, activation=True):
        super().__init__()
        parts = [nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(out_c)]
        self.layers = nn.Sequential(*parts, *([nn.PReLU(out_c)] if activation else []))

    def forward(self, x):
        return self.layers(x)


class DepthWise(nn.Module):
    def __init__(self, in_c, out_c, residual, stride, groups):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(ConvBlock(in_c, groups), ConvBlock(groups, groups, 3, stride, 1, groups=groups),
                                    ConvBlock(groups, out_c, activation=False))

    def forward(self, x):
        return x + self.layers(x) if self.residual else self.layers(x)


class Residual(nn.Module):
    def __init__(self, channels, num_block, groups):
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(channels, channels, True, 1, groups) for _ in range(num_block)])

    def forward(self, x):
        return self.layers(x)


class MobileFaceNet(nn.Module):
    def __init__(self, num_features, blocks=(1, 4, 6, 2), scale=2):
        super().__init__()
        wide, wider = 64 * scale, 128 * scale
        self.layers = nn.ModuleList([
            ConvBlock(3, wide, 3, 2, 1), ConvBlock(wide, wide, 3, 1, 1, groups=64),
            DepthWise(wide, wide, False, 2, 128), Residual(wide, blocks[1], 128),
            DepthWise(wide, wider, False, 2, 256), Residual(wider, blocks[2], 256),
            DepthWise(wider, wider, False, 2, 512), Residual(wider, blocks[3], 256)])
        self.conv_sep = ConvBlock(wider, 512)
        self.features = nn.Module()
        # GDC: a LinearBlock (depthwise 7x7 conv + BN), Flatten, Linear without bias, BatchNorm1d
        self.features.layers = nn.Sequential(ConvBlock(512, 512, 7, 1, 0, groups=512, activation=False), nn.Flatten(),
                                             nn.Linear(512, num_features, bias=False), nn.BatchNorm1d(num_features))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.features.layers(self.conv_sep(x))


# --- writing --------------------------------------------------------------------------------------------------------


def randomised(model):
    """He-scaled convolutions (activations keep their scale, so the output depends on the input) and random BN
    affine parameters and running statistics, PReLU slopes, linear biases."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, nn.PReLU):
                module.weight.uniform_(0.0, 0.3)
    return model.eval()


def arcface_checkpoint(state):
    """arcface_torch's train_v2.py `save_all_states` dict, with a stepped optimizer and scheduler of a margin head."""
    head = nn.Linear(8, 10, bias=False)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    head(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    scheduler.step()
    return {"epoch": 3, "global_step": 1000, "state_dict_backbone": state, "state_dict_softmax_fc": head.state_dict(),
            "state_optimizer": optimizer.state_dict(), "state_lr_scheduler": scheduler.state_dict()}


def save(obj, path, legacy):
    start = time.perf_counter()
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return time.perf_counter() - start


def dump_arrays(state, out):
    folder = out / "arrays"
    folder.mkdir(exist_ok=True)
    for key, tensor in state.items():
        np.save(folder / f"{key}.npy", tensor.detach().numpy())


def write_backbone(spec, out):
    torch.manual_seed(spec.get("seed", 0))
    arch, num_features = spec["arch"], spec.get("num_features", 512)
    model = MobileFaceNet(num_features) if arch == "mbf" else IResNet(IRESNET_LAYERS[arch], num_features)
    state = randomised(model).state_dict()
    if spec.get("half"):
        state = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    saved = arcface_checkpoint(state) if spec.get("checkpoint") else state
    save_s = save(saved, out / "backbone.pth", spec.get("legacy", False))
    if spec.get("arrays", True):
        dump_arrays(state, out)
    if spec.get("images"):
        images = np.random.default_rng(spec.get("seed", 0)).integers(0, 256, (spec["images"], 112, 112, 3), np.uint8)
        np.save(out / "images.npy", images)
        inputs = torch.from_numpy((images.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
        with torch.no_grad():
            np.save(out / "embeddings.npy", model(inputs).numpy())
    return {"keys": list(state), "shapes": {key: list(value.shape) for key, value in state.items()}, "save_s": save_s}


def write_views(spec, out):
    """Tensors saved as views: torch.save keeps the whole shared storage plus each view's offset and strides."""
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10) * 0.5 - 3.0
    flat = torch.linspace(-1.0, 1.0, 17, dtype=torch.float64)
    views = {"transposed": base.t(), "sliced": base[1:4, 2:9:3], "offset_row": base[4], "whole": base,
             "strided": flat[1::4], "offset_tail": flat[9:], "expanded": flat[3:4].expand(3, 2),
             "empty": base[2:2]}
    save_s = save(views, out / "views.pth", spec.get("legacy", False))
    dump_arrays(views, out)
    return {"keys": list(views), "save_s": save_s}


def main(spec_path, out):
    for job in json.loads(Path(spec_path).read_text()):
        folder = Path(out) / job["name"]
        folder.mkdir(parents=True, exist_ok=True)
        result = write_views(job, folder) if job["kind"] == "views" else write_backbone(job, folder)
        (folder / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
