"""Timing and environment helpers shared by the benchmarks."""

from __future__ import annotations

import datetime as _dt
import platform
import re
import statistics
import sys
import time
from typing import Callable

import torch

# the benchmarks' dtype names
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str) -> torch.device:
    """``device=`` of a benchmark: auto (CUDA when there is one, else the CPU), cuda or cpu; cuda
    without a CUDA device is a ValueError naming it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(name)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available here; use device=auto or cpu")
    return d


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``dtype=`` of a benchmark: auto (bf16 on CUDA, fp32 on the CPU) or one of ``DTYPES``."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]


def median_ms(
    fn: Callable[[], object],
    device: torch.device,
    warmup_ms: float = 25,
    rep_ms: float = 100,
    cuda_graphs: bool = False,
) -> float:
    """Median wall time of ``fn`` in milliseconds, warm-up excluded.

    On CUDA this is ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs), or with
    ``cuda_graphs`` ``triton.testing.do_bench_cudagraph``: fn's launches captured in a CUDA graph
    and replayed back to back, so the host's Python and launch time drop out (what a model run
    from CUDA graphs sees; no L2 flush). On the CPU a perf_counter loop with at least 3 timed runs.
    """
    if device.type == "cuda":
        import triton.testing

        if cuda_graphs:
            return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    if cuda_graphs:
        raise ValueError(f"cuda_graphs=true times CUDA graphs and needs a CUDA device, got {device}")
    fn()  # warm-up: first-call costs (allocation, dispatch caches) stay out of the numbers
    times: list[float] = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# Linux: the process's peak resident memory (VmHWM) and how to restart it from the current
# (proc(5): writing "5" to clear_refs resets the peak)
_STATUS, _CLEAR_REFS, _MEMINFO = "/proc/self/status", "/proc/self/clear_refs", "/proc/meminfo"


def host_peak_reset() -> bool:
    """Restart the process's peak resident host memory from its current value; False where the
    system does not allow it (not Linux), and then :func:`host_peak_bytes` is None."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def host_peak_bytes(pid: int | None = None) -> int | None:
    """The process's peak resident host memory since the last :func:`host_peak_reset` (since the
    start without one): Linux's VmHWM; None elsewhere. ``pid``: another process's (None where it
    has ended)."""
    return _status_bytes("VmHWM", _STATUS if pid is None else f"/proc/{pid}/status")


# a container's memory limit and use: cgroup v2, then v1 (an unlimited one reads ~2^63)
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def host_resident_bytes() -> int | None:
    """The process's resident host memory now (Linux's VmRSS); None elsewhere."""
    return _status_bytes("VmRSS")


def host_available_bytes() -> int | None:
    """The host memory this process could still get without swapping: Linux's ``MemAvailable``
    (/proc/meminfo), or less where the process's container (cgroup) has a memory limit; None
    where neither can be read (not Linux)."""
    free = [v for v in (_status_bytes("MemAvailable", _MEMINFO),) if v is not None]
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            free.append(max(int(limit) - usage, 0))
        break
    return min(free) if free else None


def _status_bytes(key: str, path: str = _STATUS) -> int | None:
    try:
        with open(path) as f:
            m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


class Skipped(Exception):
    """A benchmark case that does not apply here (recorded as skipped, not as an error)."""


def median_ms_and_peak_memory(
    fn: Callable[[], object], device: torch.device, warmup_ms: float, rep_ms: float, cuda_graphs: bool = False
) -> tuple[float, int | None]:
    """``median_ms`` of fn and, on CUDA, the peak memory allocated while it ran."""
    if device.type != "cuda":
        return median_ms(fn, device, warmup_ms, rep_ms, cuda_graphs), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    ms = median_ms(fn, device, warmup_ms, rep_ms, cuda_graphs)
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
