"""The margin losses and their default margins, in one place: the logit functions (face_losses), the head
(margin_head), the training Args (None = these defaults) and the resume check all read them from here."""

from __future__ import annotations

LOSSES = ("arcface", "cosface", "combined", "softmax")
# The losses with an angular margin, which easy_margin changes; the ones with cosines, which interclass filtering reads.
EASY_MARGIN_LOSSES = ("arcface", "combined")
COSINE_LOSSES = ("arcface", "cosface", "combined")
# Scale s and margins of each loss: ArcFace s*cos(theta + m), CosFace s*(cos(theta) - m), combined
# s*(cos(m1*theta + m2) - m3) (insightface's combined margin); softmax has none.
DEFAULT_MARGINS: dict[str, dict[str, float]] = {
    "arcface": {"s": 64.0, "m": 0.5},
    "cosface": {"s": 30.0, "m": 0.4},
    "combined": {"s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2},
    "softmax": {},
}


def check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")


def margins_in_use(loss: str, s: float | None = None, m: float | None = None, m1: float | None = None,
                   m2: float | None = None, m3: float | None = None) -> dict[str, float]:
    """The margins that `loss` really uses: each value it takes, None meaning its default; the values of margins
    it does not take (m1 for arcface, m for combined, all for softmax) are ignored."""
    check_loss(loss)
    given = {"s": s, "m": m, "m1": m1, "m2": m2, "m3": m3}
    return {key: default if given[key] is None else float(given[key])
            for key, default in DEFAULT_MARGINS[loss].items()}


def check_margin_options(loss: str, easy_margin: bool, interclass_filtering_threshold: float) -> None:
    """ValueError naming the key when `loss` cannot take the option: easy_margin only changes an angular margin
    (CosFace's s*(cos - m) has no angle to limit), and interclass filtering compares cosines, which softmax lacks."""
    check_loss(loss)
    if easy_margin and loss not in EASY_MARGIN_LOSSES:
        raise ValueError(f"easy_margin=True applies to loss {' or '.join(EASY_MARGIN_LOSSES)} (an angular margin); "
                         f"loss={loss!r} has none: leave easy_margin=False")
    if not 0.0 <= interclass_filtering_threshold < 1.0:
        raise ValueError(f"interclass_filtering_threshold={interclass_filtering_threshold} must be in [0, 1) "
                         "(0 = off)")
    if interclass_filtering_threshold and loss not in COSINE_LOSSES:
        raise ValueError(f"interclass_filtering_threshold={interclass_filtering_threshold} applies to loss "
                         f"{', '.join(COSINE_LOSSES)} (it compares cosines); loss={loss!r} has none: leave it 0")


def resolve_margins(loss: str, margins: dict[str, float] | None, easy_margin: bool,
                    interclass_filtering_threshold: float) -> dict[str, float]:
    """A head's margins: `margins` (overrides) over the loss's defaults, after checking the loss, the margin names and
    the margin options (check_margin_options); ValueError naming what is wrong."""
    check_loss(loss)
    check_margin_options(loss, easy_margin, interclass_filtering_threshold)
    margins = dict(margins or {})
    unknown = set(margins) - set(DEFAULT_MARGINS[loss])
    if unknown:
        raise ValueError(f"loss {loss!r} takes margins {sorted(DEFAULT_MARGINS[loss])}; received {sorted(unknown)}")
    return {**DEFAULT_MARGINS[loss], **margins}
