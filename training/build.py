"""Builds the embedding network and the margin head that a training Args describes."""

from __future__ import annotations

import keras

from losses import MarginHead
from nets import get_resnet


def build_embedding_model(args) -> keras.Model:
    """The embedding network of `args` (train_nets.Args): `backbone` from the registry, or the IR-ResNet."""
    image_size = tuple(args.image_size)
    if args.backbone:
        from nets import get_backbone

        return get_backbone(args.backbone, image_size=image_size, dropout_rate=args.dropout_rate,
                            embedding_size=args.embedding_size, norm=args.norm, synchronized_bn=args.sync_bn,
                            seed=args.seed)
    return get_resnet(args.net_depth, type=args.unit_type, norm=args.norm, width=args.net_width,
                      image_size=image_size, dropout_rate=args.dropout_rate, embedding_size=args.embedding_size,
                      synchronized_bn=args.sync_bn, seed=args.seed)


def build_head(args, num_classes: int) -> MarginHead:
    """The margin head of `args.loss`; margin fields left at None take the loss's defaults."""
    given = {
        "arcface": {"s": args.margin_s, "m": args.margin_m},
        "cosface": {"s": args.margin_s, "m": args.margin_m},
        "combined": {"s": args.margin_s, "m1": args.margin_m1, "m2": args.margin_m2, "m3": args.margin_m3},
        "softmax": {},
    }
    if args.loss not in given:
        raise ValueError(f"Args: unknown loss {args.loss!r}; expected one of {', '.join(given)}")
    margins = {key: value for key, value in given[args.loss].items() if value is not None}
    # The seed's variable scope for the class weights was arcface_loss whatever the loss; keep that name.
    return MarginHead(num_classes, loss=args.loss, margins=margins, seed=args.seed, name="arcface_loss")
