"""Timing a call in rounds, standard library only: the bench scripts and the PyTorch worker (bench/peer_iresnet.py,
run in the torch side venv, where this project's packages are not installed) time the same way."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Timing:
    seconds: float  # per call, best round
    median_seconds: float  # per call, median round
    cpu_seconds: float  # CPU time of this process (all threads) per call, in the best round
    rounds: int
    calls_per_round: int


def time_calls(call: Callable[[], object], warmup: int, calls: int, rounds: int, budget_seconds: float) -> Timing:
    """Best and median seconds per call over `rounds` rounds of `calls` calls, after `warmup` calls; fewer rounds
    and calls when the last warm-up call says they would not fit in `budget_seconds`."""
    for _ in range(max(1, warmup)):
        start = time.perf_counter()
        call()
        last = time.perf_counter() - start
    affordable = max(1, int(min(budget_seconds / max(last, 1e-9), calls * rounds)))
    rounds = min(rounds, affordable)
    calls = max(1, min(calls, affordable // rounds))
    measured = []
    for _ in range(rounds):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(calls):
            call()
        measured.append(((time.perf_counter() - start) / calls, (time.process_time() - cpu_start) / calls))
    best = min(measured)
    return Timing(best[0], statistics.median(m[0] for m in measured), best[1], rounds, calls)
