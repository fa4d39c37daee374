"""Where inside a prediction the GPU memory peaks, module by module (the ladder's
``memory_detail``): forward hooks on the modules of a model's block stacks read and restart the
peak meter whenever one of them starts or ends, and each stretch's peak counts for the innermost
hooked module running (its peak outside the hooked modules it calls). Modules are grouped by
their name with the block indices replaced by ``*`` (``pairformer_stack.blocks.*.tri_mul_out``):
the peak of any block's.

The meter is shared with :class:`~pairformer_fb.bench.structure.PhaseTimer`, which also restarts
it: :meth:`ModulePeaks.install` puts a wrapped meter in the timer's place (``remove`` puts the
timer's back), so that a peak read by a hook still counts for the timer's phase (the wrapped
read is the highest since the timer's own restart). Only the
GPU meter is used (reading and restarting it costs no synchronisation); host memory stays per
phase (restarting its meter walks the process's page tables).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import nn

from .structure import Meter

BLOCK_INDEX = re.compile(r"\.\d+(?=\.|$)")


def detail_modules(model: nn.Module, depth: int = 2) -> dict[str, list[nn.Module]]:
    """The modules inside the blocks of ``model``'s module lists, down to ``depth`` levels below
    a block, by name with the block indices as ``*``."""
    found: dict[str, list[nn.Module]] = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        below = [i for i, p in enumerate(parts) if p.isdigit()]
        if not below or not 0 < len(parts) - 1 - below[-1] <= depth:
            continue
        found.setdefault(BLOCK_INDEX.sub(".*", name), []).append(module)
    return found


class ModulePeaks:
    """Per-module peaks (``peaks[name]`` in bytes) of the meter ``meters[meter]`` (a phase
    timer's), which :meth:`install` wraps and :meth:`remove` restores."""

    def __init__(self, meters: dict[str, Meter], meter: str = "gpu"):
        self._meters, self._meter = meters, meter
        self._timer_meter = meters[meter]
        self._reset, self._read = self._timer_meter
        self._carried = 0
        self._running: list[tuple[int, str]] = []
        self._handles: list[Any] = []
        self.peaks: dict[str, int] = {}

    def _shared(self) -> Meter:
        """The meter in the timer's place: its read is the highest since its own reset, the
        stretches that the hooks read and restarted in between included."""

        def reset() -> None:
            self._boundary()
            self._carried = 0

        def read() -> int | None:
            value = self._read()
            return None if value is None else max(value, self._carried)

        return reset, read

    def _boundary(self) -> None:
        value = self._read()
        if value is not None:
            self._carried = max(self._carried, value)
            if self._running:
                name = self._running[-1][1]
                self.peaks[name] = max(self.peaks.get(name, 0), value)
        self._reset()

    def install(self, modules: dict[str, list[nn.Module]]) -> ModulePeaks:
        self._meters[self._meter] = self._shared()
        for name, group in modules.items():
            for module in group:
                self._handles.append(module.register_forward_pre_hook(self._enter(module, name)))
                self._handles.append(module.register_forward_hook(self._leave(module), always_call=True))
        return self

    def _enter(self, module: nn.Module, name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self._boundary()
            self._running.append((id(module), name))

        return hook

    def _leave(self, module: nn.Module) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self._boundary()
            while self._running:  # a module left by an exception is closed with it
                if self._running.pop()[0] == id(module):
                    break

        return hook

    def remove(self) -> None:
        self._meters[self._meter] = self._timer_meter
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._running.clear()
