"""Backbones: the IR-ResNet family of the seed (one builder) and its registry."""

from nets.resnet_ir import get_resnet

__all__ = ["get_resnet"]
