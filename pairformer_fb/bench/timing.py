"""Timing and environment helpers shared by the benchmarks."""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import sys
import time
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], device: torch.device, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median wall time of ``fn`` in milliseconds, warm-up excluded.

    On CUDA this is ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs); on the
    CPU a perf_counter loop with at least 3 timed runs.
    """
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()  # warm-up: first-call costs (allocation, dispatch caches) stay out of the numbers
    times: list[float] = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class Skipped(Exception):
    """A benchmark case that does not apply here (recorded as skipped, not as an error)."""


def median_ms_and_peak_memory(
    fn: Callable[[], object], device: torch.device, warmup_ms: float, rep_ms: float
) -> tuple[float, int | None]:
    """``median_ms`` of fn and, on CUDA, the peak memory allocated while it ran."""
    if device.type != "cuda":
        return median_ms(fn, device, warmup_ms, rep_ms), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    ms = median_ms(fn, device, warmup_ms, rep_ms)
    return ms, int(torch.cuda.max_memory_allocated(device))


def failure_status(e: Exception) -> str:
    """How a benchmark records a case that could not run; one failing case never stops a run."""
    message = " ".join(str(e).split())  # the whole message, on one line: never cut off
    if isinstance(e, ImportError):
        return f"not installed ({e.name or message})"
    if isinstance(e, Skipped):
        return f"skipped: {message}"
    if isinstance(e, torch.OutOfMemoryError):
        return "OOM"
    return f"error: {type(e).__name__}: {message}"


def environment(device: torch.device) -> dict:
    """What a recorded result needs to be reproducible: device, versions, date, command."""
    env: dict[str, str | None] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env
