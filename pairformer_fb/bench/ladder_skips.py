"""The ladder's two reasons to skip a run before it starts (bench/ladder.py): it would end past
``time_budget_s``, or its host memory would not fit (``host_memory_check``). Both scale the last
finished rung of the same variant by a power of the token ratio."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..modules.bias_cache import GIB
from .timing import host_available_bytes

if TYPE_CHECKING:
    from .ladder import Record

# the exponent of a run's seconds in its tokens: measured between two rungs, kept within these
# (the pair representation's O(N^2) work and the triangle updates' O(N^3)); the upper one where
# nothing was measured. Measured (H200, benchmarks/ladder_h200/): patched exact Protenix 2.24
# from 2,048 to 4,096 tokens and 2.46 from 4,096 to 6,144 (1 cycle / 20 steps, 5 samples).
TIME_EXPONENT_RANGE = (2.0, 3.0)


def _schedule(r: Record) -> tuple:
    return (r.cycles, r.steps, r.samples)


def time_exponent(records: list[Record], rec: Record) -> tuple[float, str]:
    """How a run's seconds grow with its tokens, and where that comes from: measured between the
    two longest finished rungs with ``rec``'s schedule, of its own variant if it has two, else of
    another variant (the hosts' stock and patched runs grow alike where both ran: the trunk
    dominates), within ``TIME_EXPONENT_RANGE``; its upper end without two such rungs."""
    lo, hi = TIME_EXPONENT_RANGE
    timed = [r for r in records if r.seconds and r.seconds.get("total", 0) > 0 and _schedule(r) == _schedule(rec)]
    for same_variant in (True, False):
        rungs = sorted((r for r in timed if (r.variant == rec.variant) == same_variant), key=lambda r: r.tokens)
        by_variant: dict[str, list[Record]] = {}
        for r in rungs:
            by_variant.setdefault(r.variant, []).append(r)
        for variant, rs in by_variant.items():
            if len(rs) < 2 or rs[-1].tokens <= rs[-2].tokens:
                continue
            a, b = rs[-2], rs[-1]
            assert a.seconds is not None and b.seconds is not None  # timed keeps the runs with seconds
            k = math.log(b.seconds["total"] / a.seconds["total"]) / math.log(b.tokens / a.tokens)
            k = min(hi, max(lo, k))
            return k, f"measured {k:.2f} from {variant}'s {a.tokens}- and {b.tokens}-token rungs"
    return hi, f"{hi:.0f}, nothing measured to fit it to"


def over_budget(cfg, records: list[Record], rec: Record, elapsed: float) -> str | None:
    """The skip status of a run that would overrun ``time_budget_s``: when the budget is spent,
    or when the last finished rung of the variant, with the same schedule, scaled by the token
    ratio to the power ``time_exponent`` would end past it."""
    budget = cfg.get("time_budget_s")
    if budget is None:
        return None
    if elapsed >= budget:
        return f"skipped: time budget of {budget} s spent ({elapsed:.0f} s)"
    prev = [r for r in records if r.variant == rec.variant and r.seconds and _schedule(r) == _schedule(rec)]
    if prev:
        p = max(prev, key=lambda r: r.tokens)
        assert p.seconds is not None  # prev keeps the runs with seconds
        k, why = time_exponent(records, rec)
        guess = p.seconds["total"] * (rec.tokens / p.tokens) ** k * (1 + cfg.warmup)
        if elapsed + guess > budget:
            return (
                f"skipped: time budget of {budget} s: {elapsed:.0f} s spent, this run estimated at {guess:.0f} s "
                f"(the {p.tokens}-token rung's {p.seconds['total']:.0f} s x (tokens ratio)^{k:.2f}; exponent {why})"
            )
    return None


def over_host_memory(cfg, records: list[Record], rec: Record) -> str | None:
    """The skip status of a run whose host memory would not fit (``host_memory_check``): the last
    finished rung of the variant used ``peak_host_gib - host_start_gib`` more host memory than it
    started with; scaled by the square of the token ratio (what grows fastest in host memory:
    e.g. Protenix's pae / pde logits, which it moves to host memory beyond 2,000 tokens) it exceeds
    what the system has available now. A run past the host's memory is not an exception but the
    end of the process (the kernel's OOM killer), which would end the ladder. An estimate: it
    does not see a jump in what lives in host memory between the rungs (Protenix below and
    above 2,000 tokens), and stays quiet where the memory cannot be read (not Linux)."""
    if not cfg.get("host_memory_check", True):
        return None
    prev = [
        r
        for r in records
        if r.variant == rec.variant
        and r.status == "ok"
        and r.tokens < rec.tokens
        and r.peak_host_gib is not None
        and r.host_start_gib is not None
    ]
    available = host_available_bytes()
    if not prev or available is None:
        return None
    p = prev[-1]
    assert p.peak_host_gib is not None and p.host_start_gib is not None  # prev keeps those
    grew = max(p.peak_host_gib - p.host_start_gib, 0.0)
    need = grew * (rec.tokens / p.tokens) ** 2
    if need > available / GIB:
        return (
            f"skipped: host memory: this run would take ~{need:.0f} GiB more (the {p.tokens}-token rung's "
            f"{grew:.1f} GiB x (tokens ratio)^2), {available / GIB:.0f} GiB are available; past that the system "
            "ends the process instead of raising an out-of-memory error (host_memory_check=false runs it anyway, "
            "isolate in a child process)"
        )
    return None
