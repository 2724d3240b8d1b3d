"""The seed's file name for models B-C, the 4x-wide IR-ResNet (100 layers keyed 101): see get_seed_wide_resnet."""
import functools

from nets.registry import get_seed_wide_resnet

get_resnet = functools.partial(get_seed_wide_resnet, norm="bn")
