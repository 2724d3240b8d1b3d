"""Builds one backbone and logs its summary and weight count: ``python -m nets --net_depth=50 --norm=bn``."""

from __future__ import annotations

import logging
from typing import Annotated

from config import Choices, Config, ImageSize, run_script

log = logging.getLogger("nets")


class Args(Config):
    RENAMED = {"width": "net_width"}  # earlier names, still accepted

    net_depth: Annotated[int, Choices(18, 34, 50, 100, 152, 200)] = 50  # 18, 34, 50, 100, 152 or 200
    unit_type: Annotated[str, Choices("ir", "se_ir")] = "ir"  # "ir" or "se_ir"
    norm: Annotated[str, Choices("bn", "gn", "brn")] = "bn"  # "bn", "gn" or "brn"
    net_width: Annotated[int, Choices(1, 4)] = 1  # 1 (model D) or 4 (the seed's L_Resnet_E_IR.py, models A-C)
    image_size: ImageSize = [112, 112]  # input height, width (one N: N x N)


def main(args: Args) -> None:
    from nets import get_resnet

    model = get_resnet(args.net_depth, unit_type=args.unit_type, norm=args.norm, net_width=args.net_width,
                       image_size=tuple(args.image_size))
    model.summary(print_fn=log.info, line_length=120)
    log.info("%s: %d weights (%d trainable), %d variables", model.name, model.count_params(),
                                   sum(int(w.numpy().size) for w in model.trainable_weights), len(model.weights))


if __name__ == "__main__":
    run_script(Args, main)
