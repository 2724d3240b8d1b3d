"""Which channel order ("BGR" or "RGB") a model's images are fed in: the one decision, for every kind of model.

An explicit value wins (None means unset); else the one recorded with the model (the training run's args.json, or
the preprocessing baked into an export); else the seed's BGR. An explicit value that differs from the record is
used, with a warning naming both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.preprocessing import check_channel_order
from models.checkpoints import find_args_json, read_args_json

log = logging.getLogger(__name__)

SEED_CHANNEL_ORDER = "BGR"


@dataclass(frozen=True)
class RecordedOrder:
    """A channel order recorded with a model, and where (shown in the log and in warnings)."""

    channel_order: str
    where: str


def recorded_in_args_json(path: str | Path) -> RecordedOrder | None:
    """The channel order in the args.json of the run that `path` (a checkpoint, a run folder, best/embedding.keras)
    belongs to, or None when there is no args.json or it records none."""
    try:
        args_json = find_args_json(path)
    except FileNotFoundError:
        return None
    order = read_args_json(args_json).get("channel_order")
    return RecordedOrder(order, str(args_json)) if order else None


def resolve_channel_order(explicit: str | None, recorded: RecordedOrder | None, source: str | Path) -> str:
    """The channel order to feed the model from `source`: `explicit` > `recorded` > the seed's BGR (logged)."""
    if explicit is not None:
        check_channel_order(explicit)
        if recorded is not None and recorded.channel_order != explicit:
            log.warning("channel_order=%s differs from %s recorded in %s: using %s", explicit,
                        recorded.channel_order, recorded.where, explicit)
        return explicit
    if recorded is not None:
        check_channel_order(recorded.channel_order)  # a hand-edited args.json
        log.info("channel order %s (recorded in %s)", recorded.channel_order, recorded.where)
        return recorded.channel_order
    log.info("channel order %s (the seed's convention; none recorded for %s)", SEED_CHANNEL_ORDER, source)
    return SEED_CHANNEL_ORDER
