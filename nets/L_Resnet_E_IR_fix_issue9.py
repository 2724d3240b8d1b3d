"""The seed's file name for model D, the width-1 IR-ResNet: `get_resnet` is nets.resnet_ir.get_resnet."""
from nets.resnet_ir import get_resnet

__all__ = ["get_resnet"]
