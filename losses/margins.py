"""The margin losses and their default margins, in one place: the logit functions (face_losses), the head
(margin_head), the training Args (None = these defaults) and the resume check all read them from here."""

from __future__ import annotations

LOSSES = ("arcface", "cosface", "combined", "softmax")
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
