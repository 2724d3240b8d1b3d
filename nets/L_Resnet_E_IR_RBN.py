"""The seed's file name for the 4x-wide IR-ResNet with batch renormalisation: see get_seed_wide_resnet."""
import functools

from nets.registry import get_seed_wide_resnet

get_resnet = functools.partial(get_seed_wide_resnet, norm="brn")
