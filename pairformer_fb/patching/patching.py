"""``patch_model`` / ``unpatch_model``: swap a host model's pair-biased attention modules for
FlashBias ones in place, on the host's own parameters, and back."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import EllipsisType
from typing import Callable, Iterable, Mapping, Sequence, Union

import torch
from torch import nn

from ..hosts import (
    DEFAULT_KINDS,
    DIFFUSION_KINDS,
    KINDS,
    PatchedModule,
    UnsupportedModelError,
    detect_host,
    get_adapter,
)
from ..hosts.call_scope import ScopedPatchedModule
from ..modules import FlashBiasDiffusionAttention
from ..modules.bias_cache import BiasCacheBudget, BiasCacheEntry, SVDConfig, check_bias_cache_gib
from ..modules.common import MODES
from ..modules.factor_network import FactorConfig, factor_config_for
from .cuda_graphs import reset_graphs

# A mode for every patched block: one mode; {mode: block indices} with ``...`` for "every
# block not listed under another mode"; or block index -> mode (None: leave the block alone).
ModeSpec = Union[str, Mapping[str, Union[Iterable[int], EllipsisType]], Callable[[int], Union[str, None]]]


# set on a host module some of whose methods patch_model replaced by its adapter's lean_methods:
# their names (the instance attributes unpatch_model removes)
LEAN_MARK = "_pairformer_fb_lean_methods"


class AlreadyPatchedError(RuntimeError):
    """``patch_model`` on a model that already holds patched modules."""


@dataclass(frozen=True)
class PatchedEntry:
    """One replaced module: its path in the model, kind ("triangle" / "single"), triangle node,
    stack and block index, mode, factor rank (None without a factor network) and the number of
    parameters added (the factor network's; the host's are shared)."""

    path: str
    kind: str
    node: str | None
    stack: str
    block: int
    mode: str
    rank: int | None
    params_added: int


@dataclass
class PatchReport:
    """What ``patch_model`` did. ``params_shared``: elements of the host parameters our modules
    use in place (not copied); ``params_added``: elements of the factor networks added;
    ``bias_cache``: the memory bound shared by the bias caches of the modules patched (None
    when none has a cache; its ``stats()`` say what they held and refused); ``lean``: the host
    methods replaced by lean ones (``lean_memory``), as "module path.method"."""

    host: str
    entries: list[PatchedEntry] = field(default_factory=list)
    params_shared: int = 0
    bias_cache: BiasCacheBudget | None = None
    lean: list[str] = field(default_factory=list)

    @property
    def params_added(self) -> int:
        return sum(e.params_added for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __str__(self) -> str:
        lines = [
            f"patch_model: host {self.host}, {len(self.entries)} module(s) replaced, "
            f"{self.params_added:,} parameter(s) added, {self.params_shared:,} shared"
            + (f"; lean host methods: {', '.join(self.lean)}" if self.lean else "")
        ]
        if self.entries:
            rows = [("path", "kind", "stack", "block", "mode", "rank", "added")] + [
                (
                    e.path,
                    e.kind + (f" ({e.node})" if e.node else ""),
                    e.stack,
                    str(e.block),
                    e.mode,
                    "-" if e.rank is None else str(e.rank),
                    f"{e.params_added:,}",
                )
                for e in self.entries
            ]
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)


def _mode_rule(mode: ModeSpec) -> Callable[[int], str | None]:
    if isinstance(mode, str):
        _check_mode(mode)
        return lambda block: mode
    if isinstance(mode, Mapping):
        listed: dict[int, str] = {}
        rest = None
        for m, blocks in mode.items():
            _check_mode(m)
            if blocks is Ellipsis:
                if rest is not None:
                    raise ValueError(f"mode: only one mode may take the remaining blocks (...), got {rest!r} and {m!r}")
                rest = m
                continue
            for b in blocks:
                if not isinstance(b, int) or b < 0:
                    raise ValueError(f"mode[{m!r}]: block indices must be ints >= 0, got {b!r}")
                if b in listed and listed[b] != m:
                    raise ValueError(f"mode: block {b} is listed under both {listed[b]!r} and {m!r}")
                listed[b] = m
        return lambda block: listed.get(block, rest)
    if callable(mode):

        def rule(block: int) -> str | None:
            m = mode(block)
            if m is not None:
                _check_mode(m, f"mode({block})")
            return m

        return rule
    raise TypeError(f"mode must be a str, a mapping mode -> block indices or a callable, got {type(mode).__name__}")


def _describe_mode(mode: ModeSpec) -> str:
    if isinstance(mode, Mapping):
        return "{" + ", ".join(f"{m!r}: {'...' if b is Ellipsis else list(b)}" for m, b in mode.items()) + "}"
    return repr(mode) if isinstance(mode, str) else "a callable (None for every block)"


def _check_mode(m, what: str = "mode") -> None:
    if m not in MODES:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, MODES))}, got {m!r}")


# patch_model's diffusion_dtype -> the diffusion modules' compute dtype
DIFFUSION_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def patch_model(
    model: nn.Module,
    *,
    host: str = "auto",
    mode: ModeSpec = "exact",
    rank: int | None = None,
    blocks: Iterable[int] | None = None,
    kinds: Sequence[str] = DEFAULT_KINDS,
    stacks: Sequence[str] | None = None,
    factor_config: FactorConfig | None = None,
    svd_config: SVDConfig | None = None,
    backend: str = "auto",
    trust_inference_tensors: bool = False,
    diffusion_dtype: str | None = None,
    bias_cache_gib: float | str | None = "auto",
    lean_memory: bool = True,
) -> PatchReport:
    """Replace, in place, the triangle attentions and pair-biased single attentions of a host
    model with FlashBias modules that use the original nn.Parameter objects.

    Args:
        model: a host model or any part of one holding its Pairformer blocks (e.g. Protenix's
            ``PairformerStack`` or the whole ``Protenix`` model).
        host: "auto" (detected from the classes of the model's modules) or a key of
            ``pairformer_fb.hosts.HOSTS`` ("protenix", "boltz", "openfold3").
        mode: "exact" / "lowrank" / "distill" for every selected block; or a mapping
            ``{mode: block indices}`` where ``...`` stands for every block not listed under
            another mode (``{"lowrank": range(16), "exact": ...}``; blocks in no entry are
            left alone); or a callable ``block_index -> mode or None`` (None: left alone).
            Block indices count within each stack, and the rule applies to every selected stack.
            The modules' ``mode`` can also be changed later (``wrapper.mode = ...``).
        rank: the factor rank of the lowrank / distill modules (default 32); factor networks
            are added only to those. Must agree with ``factor_config`` if both are given.
        blocks: the block indices to patch (None: all).
        kinds: which modules: "triangle" (starting and ending node), "single" (the default
            two), and, for hosts whose adapter has them (Protenix, Boltz-2, OpenFold3),
            "diffusion" (the diffusion transformer's conditioned attention) and "atom" (the atom
            transformer's local attention, always exact). Their bias is computed once per trunk pass and reused
            across diffusion steps and samples.
        stacks: which of the host's stacks (None: the adapter's ``DEFAULT_STACKS``, the trunk's
            Pairformer; each adapter's ``STACKS`` lists the others, e.g. Protenix: "pairformer",
            "msa", "template", "confidence", and for the diffusion kinds "diffusion" (the
            diffusion module's, in Protenix's defaults) and "input" (the input embedder's atom
            encoder); Boltz-2 also "affinity").
        factor_config: the factor networks' architecture (default ``FactorConfig(rank=rank)``).
            Lowrank / distill "diffusion" modules get factor networks only when it is given;
            otherwise lowrank "diffusion" modules take the truncated SVD of their fixed bias.
        svd_config: that SVD's rank rule (default ``SVDConfig()``: 1% relative error per head,
            rank at most 64).
        backend: passed to the modules ("auto": Triton on CUDA, torch otherwise).
        trust_inference_tensors: let the diffusion attentions' cached biases be reused under
            ``torch.inference_mode`` too (default False: there, inputs without a version counter
            cannot be proved unmodified, so the bias is recomputed at every step). With True an
            inference tensor counts as unchanged while it is the same object with the same
            storage and layout: safe unless something writes the trunk outputs / features in
            place between the diffusion steps (see ``pairformer_fb.modules.bias_cache``).
        diffusion_dtype: None (default: the host's precision) or "bf16" / "fp16": the
            "diffusion" and "atom" modules of a host that runs its diffusion without autocast
            (Protenix: fp32 with TF32) compute in that dtype under autocast and return the
            update in the host's dtype (``FlashBiasDiffusionAttention.compute_dtype``). Faster,
            not bit-faithful: the structure benchmark reports the agreement.
        bias_cache_gib: the most memory the bias caches of the patched diffusion attentions
            (kinds "diffusion" and "atom"; Boltz-2's precomputed-bias attentions) hold
            together, shared by them (``PatchReport.bias_cache``, a
            ``modules.bias_cache.BiasCacheBudget``): a number of GiB (0: no bias is kept),
            None (no bound) or "auto" (the default: on CUDA half of the memory the caches could
            use when a bias is admitted, no bound on a CPU). A module whose bias does not fit
            recomputes it at every call (exact mode: bit-identical to the cached bias) instead
            of keeping it for the whole sampling. Whatever the bound, the cached biases are
            dropped when a module of the adapter's ``AFTER_SAMPLING_CLASSES`` starts (the
            host's confidence head: a prediction's sampling is over), so that it has that memory.
        lean_memory: replace the host methods the adapter's ``lean_methods`` names by ones
            computing the same outputs in parts, with less peak memory (default True; Protenix,
            hosts/protenix/lean.py: the confidence head one diffusion sample per call, so that
            its pae / pde logits, in host memory beyond 2,000 tokens, peak at 2 x samples + 2
            per-sample blocks instead of 3 x samples, and in inference it gives back the
            features' ``relp``, unused after the sampling; the diffusion's pair conditioning in
            rows of the pair representation; the relative-position features built with uint8
            instead of int64 one-hots). Replaced on the instances (the host's classes are
            untouched; ``unpatch_model`` removes them); ``PatchReport.lean`` lists them.

    Returns:
        a PatchReport listing every replaced module. Raises AlreadyPatchedError on a model
        that holds patched modules, ValueError when ``mode`` / ``blocks`` select none of the
        modules found (naming what was asked and the block indices that exist), UnsupportedModelError on a model of no known host or with
        nothing to patch, ImportError when the host's package is missing.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    patched = [name for name, m in model.named_modules() if isinstance(m, PatchedModule)]
    if patched:
        raise AlreadyPatchedError(
            f"the model is already patched ({len(patched)} module(s), e.g. {patched[0]!r}): "
            "call pairformer_fb.unpatch_model(model) first"
        )
    host = detect_host(model) if host == "auto" else host
    adapter = get_adapter(host)

    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)!r}")
    stacks = tuple(adapter.DEFAULT_STACKS if stacks is None else stacks)
    bad = set(stacks) - set(adapter.STACKS)
    if bad or not stacks:
        raise ValueError(f"stacks must be a non-empty subset of {adapter.STACKS} for host {host!r}, got {stacks!r}")
    user_factor_config = factor_config
    factor_config = factor_config_for(rank, factor_config)
    if svd_config is None:
        svd_config = SVDConfig()
    rule = _mode_rule(mode)
    selected = None if blocks is None else set(blocks)
    if diffusion_dtype not in DIFFUSION_DTYPES:
        raise ValueError(f"diffusion_dtype must be None, 'bf16' or 'fp16', got {diffusion_dtype!r}")
    budget = BiasCacheBudget(check_bias_cache_gib(bias_cache_gib))
    if not isinstance(lean_memory, bool):
        raise ValueError(f"lean_memory must be True or False, got {lean_memory!r}")

    sites = adapter.find_sites(model, stacks=stacks, kinds=tuple(kinds))
    if not sites:
        raise UnsupportedModelError(
            f"found no {'/'.join(kinds)} attention module of host {host!r} to patch in the stacks "
            f"{stacks} of {type(model).__name__}"
        )
    # build every replacement first, so that an unsupported module leaves the model untouched
    plan = []
    for site in sites:
        if selected is not None and site.block not in selected:
            continue
        block_mode = rule(site.block)
        if block_mode is None:
            continue
        if site.kind in DIFFUSION_KINDS:
            cfg = user_factor_config if block_mode != "exact" else None
            extra = {"svd_config": svd_config}
        else:
            cfg = factor_config if block_mode != "exact" else None
            extra = {}
        wrapper = adapter.make_replacement(site, mode=block_mode, factor_config=cfg, backend=backend, **extra)
        if (
            diffusion_dtype is not None
            and site.kind in DIFFUSION_KINDS
            and not isinstance(wrapper.flash_bias, FlashBiasDiffusionAttention)  # the one with compute_dtype
        ):
            raise ValueError(
                f"diffusion_dtype={diffusion_dtype!r}: {site.path} ({type(wrapper.flash_bias).__name__}, "
                f"host {host!r}) has no compute dtype option; leave diffusion_dtype=None"
            )
        plan.append((site, wrapper))
    if not plan:
        found = sorted({site.block for site in sites})
        raise ValueError(
            f"patch_model selected no module: mode={_describe_mode(mode)}"
            + (f", blocks={sorted(selected)}" if selected is not None else "")
            + f" matches none of the {len(sites)} {'/'.join(kinds)} module(s) found in the stacks {stacks} "
            f"of {type(model).__name__}, whose block indices are {found[0]}..{found[-1]}"
        )

    reset_graphs(model)  # a CUDA graph of a module inside would replay the old kernels
    report = PatchReport(host=host)
    shared: set[int] = set()
    for site, wrapper in plan:
        setattr(site.parent, site.attr, wrapper)
        if isinstance(wrapper, ScopedPatchedModule):
            wrapper.trust_inference_tensors = bool(trust_inference_tensors)
        if site.kind in DIFFUSION_KINDS and isinstance(wrapper.flash_bias, FlashBiasDiffusionAttention):
            wrapper.flash_bias.compute_dtype = DIFFUSION_DTYPES[diffusion_dtype]
        cache = getattr(wrapper.flash_bias, "bias_cache", None)
        if isinstance(cache, BiasCacheEntry):
            cache.budget = budget
            report.bias_cache = budget
        wrapper.on_patch()
        fn = wrapper.flash_bias.factor_network
        added = sum(p.numel() for p in fn.parameters()) if fn is not None else 0
        for p in site.module.parameters():
            if id(p) not in shared:
                shared.add(id(p))
                report.params_shared += p.numel()
        report.entries.append(
            PatchedEntry(
                path=site.path,
                kind=site.kind,
                node=site.node,
                stack=site.stack,
                block=site.block,
                mode=wrapper.mode,
                rank=fn.config.rank if fn is not None else None,
                params_added=added,
            )
        )
    if report.bias_cache is not None:
        # a prediction's diffusion sampling is over when its confidence head starts: the cached
        # biases (recomputable, up to the budget's limit) are dropped so that the head has that memory
        budget.release_hooks = [
            m.register_forward_pre_hook(lambda module, args, budget=budget: budget.release())
            for m in model.modules()
            if type(m).__name__ in adapter.AFTER_SAMPLING_CLASSES
        ]
    if lean_memory:
        for name, m in model.named_modules():
            methods = adapter.lean_methods(m)
            for method, replacement in methods.items():
                # an instance attribute: the host's class keeps its method, a deep copy rebinds it
                setattr(m, method, replacement)
                report.lean.append(f"{name}.{method}" if name else method)
            if methods:
                setattr(m, LEAN_MARK, tuple(methods))
    return report


def unpatch_model(model: nn.Module) -> list[str]:
    """Put the original host modules back in place of every patched module of ``model`` (the
    factor networks are dropped). Returns the restored paths; raises ValueError if there are none."""
    restored = []
    for m in model.modules():
        for method in getattr(m, LEAN_MARK, ()):  # patch_model's lean_memory
            delattr(m, method)
        if hasattr(m, LEAN_MARK):
            delattr(m, LEAN_MARK)
    for name, m in list(model.named_modules()):
        if not isinstance(m, PatchedModule):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, m.host_module)
        cache = getattr(m.flash_bias, "bias_cache", None)
        if isinstance(cache, BiasCacheEntry) and cache.budget is not None:
            cache.budget.remove_release_hooks()  # the budget's hooks on the host's confidence heads
        m.on_unpatch()
        restored.append(name)
    if not restored:
        raise ValueError("the model holds no patched module (nothing to unpatch)")
    reset_graphs(model)
    return restored


def patched_modules(model: nn.Module) -> dict[str, PatchedModule]:
    """The patched modules of ``model`` by path (e.g. to read ``last_distill_loss`` or set ``mode``)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PatchedModule)}


def clear_weight_caches(model: nn.Module) -> int:
    """Forget what the FlashBias modules of ``model`` derived from its weights for inference (the
    stacked projection weights, the diffusion attentions' cached biases) and drop its CUDA
    graphs. Those caches follow each parameter's identity and version counter, which in-place
    updates, ``load_state_dict`` and optimiser steps advance; an edit through ``.data`` (e.g. an
    EMA swap written that way) does not. Call this after such an edit. Returns how many caches it
    cleared."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cleared = 0
    # a patched module keeps its FlashBias module outside its registered children
    inner = [m.flash_bias for m in model.modules() if isinstance(m, PatchedModule)]
    for m in [*model.modules(), *(x for f in inner for x in f.modules())]:
        if "_pfb_concat_cache" in m.__dict__:  # modules.common.concat_linear_params's
            del m.__dict__["_pfb_concat_cache"]
            cleared += 1
        cache = getattr(m, "bias_cache", None)
        if isinstance(cache, BiasCacheEntry) and cache.payload is not None:
            cache.clear()
            cleared += 1
    reset_graphs(model)
    return cleared
