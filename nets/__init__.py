"""Backbones: the IR-ResNet family of the seed (one builder), the seed's other backbones, and their registry.

`get_backbone(name, **kwargs)` builds any of them by name (see nets.registry). Everything here is Keras and keras.ops
only, except nets.seed_checkpoint (loading the seed's TF1 checkpoints), which uses TensorFlow and is imported on its
own. `load_pretrained(path)` imports insightface's released recognisers (nets.pretrained), wrapped with their
preprocessing (nets.preprocessing). Exporting a network lives in deploy/.
"""

# First: for `python -m nets`, importing config sets TF_CPP_MIN_LOG_LEVEL before Keras loads TensorFlow.
import config  # noqa: F401
from nets.mobilefacenet import get_mobilefacenet
from nets.pretrained import load_pretrained
from nets.registry import backbone_names, get_backbone, get_seed_wide_resnet
from nets.resnet_ir import get_resnet
from nets.resnet_v1 import get_resnet_v1
from nets.vgg import get_vgg

__all__ = ["backbone_names", "get_backbone", "get_mobilefacenet", "get_resnet", "get_resnet_v1",
           "get_seed_wide_resnet", "get_vgg", "load_pretrained"]
