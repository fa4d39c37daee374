"""A ladder run in a child process (``host_memory_check=isolate``), for a run whose host memory
the ladder predicts would not fit (``ladder_skips.over_host_memory``). Past the host's memory the
kernel ends the process that asked for it (the OOM killer's SIGKILL) instead of raising an error:
in the ladder's own process that would end the ladder with every later rung. In a child, the
run is measured where it fits, and where it does not its record says so and the ladder goes on.

The child runs ``ladder.run`` on the ladder's settings for that one rung and variant
(``host_memory_check=false``, no time budget) into a temporary folder; its record replaces the
run's (the run's date and the note ``isolated`` kept). The parent reads the child's peak resident
memory (Linux's VmHWM, ``timing.host_peak_bytes``) while it runs: a child ended by SIGKILL is recorded as
``oom`` with that peak (``peak_host_gib``) and ``notes.oom_during = "host memory: ..."``; other
endings as ``error: ...``. The child builds its own model and features while the parent keeps
its model, so it runs only the runs the check flags.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..modules.bias_cache import GIB
from .timing import host_peak_bytes

CHILD_CODE = "import sys; from omegaconf import OmegaConf; from pairformer_fb.bench import ladder; ladder.run(OmegaConf.load(sys.argv[1]))"


def child_command(config_path: Path) -> list[str]:
    """The command that runs the ladder on ``config_path`` in a child process."""
    return [sys.executable, "-c", CHILD_CODE, str(config_path)]


def run_isolated(cfg: Any, rec: Any, reason: str, poll_s: float = 0.5) -> None:
    """Run ``rec``'s rung and variant in a child process and fill ``rec`` from it (``reason``:
    why, the host-memory check's estimate)."""
    with tempfile.TemporaryDirectory(prefix="ladder_isolated_") as tmp:
        settings = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(settings, dict)
        settings.update(
            tokens=[rec.tokens],
            variants=[rec.variant],
            output_dir=str(Path(tmp) / "out"),
            resume=False,
            overwrite=False,
            host_memory_check=False,
            time_budget_s=None,
        )
        path = Path(tmp) / "config.yaml"
        OmegaConf.save(OmegaConf.create(settings), path)
        proc = subprocess.Popen(child_command(path))
        peak = 0
        while proc.poll() is None:
            peak = max(peak, host_peak_bytes(proc.pid) or 0)
            time.sleep(poll_s)
        results = Path(tmp) / "out" / "results.json"
        found = []
        if results.exists():
            found = [
                r
                for r in json.loads(results.read_text()).get("records", [])
                if (r.get("tokens"), r.get("variant")) == (rec.tokens, rec.variant)
            ]
    note = f"run in a child process (host_memory_check=isolate): {reason.removeprefix('skipped: host memory: ')}"
    if found:
        date = rec.date
        for f in fields(rec):
            if f.name in found[0]:
                setattr(rec, f.name, found[0][f.name])
        rec.date = date
        rec.notes = dict(rec.notes or {}) | {"isolated": note}
        return
    rc = proc.returncode
    rec.peak_host_gib = round(peak / GIB, 3) if peak else None
    rec.notes = dict(rec.notes or {}) | {"isolated": note}
    if rc == -signal.SIGKILL:
        rec.status = "oom"
        rec.notes["oom_during"] = (
            f"host memory: the system ended the run (SIGKILL) at {peak / GIB:.1f} GiB resident"
            if peak
            else "host memory: the system ended the run (SIGKILL)"
        )
    else:
        ending = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        rec.status = f"error: the isolated run ended with {ending} and no record"
