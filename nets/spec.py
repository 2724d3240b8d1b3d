"""The embedding network a training run describes, as plain values: what `args.json` needs to rebuild it.

`NetworkSpec` holds the network fields of train_nets.Args under the same names and with the same defaults, so that
training (from its Args) and everything that rebuilds a run's network (from the run's args.json: evaluation, export,
fine-tuning) build it the same way, without importing the training script.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import keras

from common.sizes import image_size_pair
from nets.registry import get_backbone
from nets.resnet_ir import get_resnet


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The network fields of train_nets.Args (see their comments there); the defaults are that class's."""

    net_depth: int = 50
    unit_type: str = "ir"
    norm: str = "bn"
    net_width: int = 1
    backbone: str = ""  # a registry name (nets.get_backbone); "" = the IR-ResNet of the fields above
    dropout_rate: float = 0.4
    embedding_size: int = 512
    sync_bn: bool = False
    norm_epsilon: float | None = None  # every norm's variance epsilon; None = the seed's (nets.norms.SEED_EPSILONS)
    projection_shortcut: bool = False  # IR-ResNet: conv 1x1/2 + norm shortcut in every strided unit (arcface_torch)
    seed: int = 313
    image_size: tuple[int, int] = (112, 112)

    def __post_init__(self) -> None:
        # args.json holds [h, w] (or one N); one form here, so that two specs of one network compare equal.
        object.__setattr__(self, "image_size", image_size_pair(self.image_size))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> NetworkSpec:
        """The spec of an args.json dict (or Args.to_dict()): its network fields; other keys are ignored, missing
        ones take the defaults."""
        return cls(**{name: values[name] for name in cls.field_names() if name in values})

    def build(self) -> keras.Model:
        """The embedding network (random weights): `backbone` from the registry, or the IR-ResNet."""
        options = dict(image_size=self.image_size, dropout_rate=self.dropout_rate,
                      embedding_size=self.embedding_size, synchronized_bn=self.sync_bn, seed=self.seed)
        # Passed only when set: the builders without these options (VGG, ResNet v1) keep working at the defaults.
        if self.norm_epsilon is not None:
            options["norm_epsilon"] = self.norm_epsilon
        if self.projection_shortcut:
            options["projection_shortcut"] = True
        if self.backbone:
            return get_backbone(self.backbone, norm=self.norm, **options)
        return get_resnet(self.net_depth, self.unit_type, self.norm, self.net_width, **options)
