"""Host checkpoint -> FlashBias checkpoint, and back (``scripts/convert_checkpoint.py``).

``convert_checkpoint(input, output, ...)``:

1. reads the host checkpoint in its own container (``checkpoint.read_checkpoint``: format and
   host detected, or forced with ``host=``), refusing a converted one;
2. builds the host model of preset ``model`` (``presets``; or takes an ``nn.Module``) and loads the
   state dict into it strictly (a missing, unexpected or mis-shaped key is an error naming it);
3. ``patch_model`` with the requested modes / rank / stacks;
4. fits every factor network to the true biases of the model on sample proteins
   (``factor_init``; ``samples``) and reports the error reached per module;
5. writes a new file atomically: the container as it was, every original key and tensor
   unchanged, plus ``<patched module path>.factor_network.*`` in the state dict (and in the EMA
   weights, where the container has them) and the ``"pairformer_fb"`` metadata; and a report
   (``<output>.report.json`` and ``.md``) next to it.

``convert_checkpoint(..., strip=True)`` turns a converted checkpoint back into the plain host
checkpoint. ``load_converted(path, model)`` patches a host model as the metadata records and
loads the converted state dict into it. Nothing is written when anything fails.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..hosts import DEFAULT_KINDS, HOSTS, KINDS, host_module
from ..hosts.presets import DEFAULT_PRESETS
from ..modules.common import is_count
from ..modules.factor_network import FactorConfig, factor_config_for
from ..patching.patching import patch_model, unpatch_model
from .checkpoint import (
    EMA_LOCATIONS,
    FACTOR_KEY_MARK,
    METADATA_KEY,
    CheckpointError,
    HostCheckpoint,
    _strip_prefix,
    check_output_path,
    make_metadata,
    read_checkpoint,
    strip_checkpoint,
    write_checkpoint_atomic,
)
from .factor_init import FitResult, fit_patched_model

DEFAULT_SAMPLES_DIR = Path(__file__).resolve().parents[2] / "data_samples"


@dataclass
class ConversionReport:
    """What ``convert_checkpoint`` did (``fits``: one ``FitResult`` per fitted module)."""

    host: str
    input: str
    output: str
    action: str  # "convert" / "strip"
    model: str | None = None
    model_prefix: str = ""
    modules: dict[str, dict] = field(default_factory=dict)
    factor_config: dict | None = None
    samples: list[str] = field(default_factory=list)
    sample_run: str | None = None
    fits: list[FitResult] = field(default_factory=list)
    keys_added: int = 0
    keys_removed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["fits"] = [f.as_dict() for f in self.fits]
        return d

    def markdown(self) -> str:
        lines = [
            f"# Checkpoint {self.action}: {self.host}",
            "",
            f"- input: `{self.input}`",
            f"- output: `{self.output}`",
        ]
        if self.action == "strip":
            lines.append(f"- factor-network keys removed: {self.keys_removed}")
            return "\n".join(lines) + "\n"
        modes: dict[str, int] = {}  # mode -> how many modules
        for m in self.modules.values():
            modes[m["mode"]] = modes.get(m["mode"], 0) + 1
        lines += [
            f"- model: `{self.model}` (state-dict prefix `{self.model_prefix}`)",
            (
                f"- patched modules: {len(self.modules)} ({', '.join(f'{v} {k}' for k, v in modes.items())}); "
                f"keys added: {self.keys_added}"
            ),
            f"- factor config: {self.factor_config}",
            f"- samples: {', '.join(self.samples) or '-'}",
            f"- sample run: {self.sample_run or '-'}",
            f"- time: {self.seconds:.1f} s",
        ]
        if self.fits:
            lines += [
                "",
                (
                    "Bias-approximation error per module (relative squared error of phi_q phi_k^T "
                    "against the dense bias, over the samples): the factor network's random init, after the "
                    "least-squares fit to the truncated SVD, after Adam (final), the rank-R SVD floor, "
                    "and the final network's error on held-out samples (the last ones, not fitted to)."
                ),
                "",
                "| module | kind | rank | random init | lstsq | final | SVD floor | held out |",
                "|---|---|---:|---:|---:|---:|---:|---:|",
            ]
            lines += [
                f"| `{f.path}` | {f.kind} | {f.rank} | {f.init_error:.4f} | {f.lstsq_error:.4f} | "
                f"{f.error:.4f} | {f.svd_floor:.4f} | "
                f"{'-' if f.heldout_error is None else f'{f.heldout_error:.4f}'} |"
                for f in self.fits
            ]
        return "\n".join(lines) + "\n"


def build_model(
    host: str, preset: str | None, ckpt: HostCheckpoint | None = None, *, overrides: Mapping[str, Any] | None = None
) -> tuple[nn.Module, str]:
    """The host model of ``preset`` (None: the host's default in ``presets.DEFAULT_PRESETS``) and
    the name of the preset used: ``hosts/<host>/presets.build_model`` (Protenix: with the fastest
    triangle kernels installed, and ``overrides``, more Protenix settings, last; Boltz-2: the
    trunk of the checkpoint's ``hyper_parameters``)."""
    preset = preset or DEFAULT_PRESETS[host]
    container = ckpt.container if ckpt is not None else None
    hparams = container.get("hyper_parameters") if isinstance(container, Mapping) else None
    return host_module(host, "presets").build_model(preset, hyper_parameters=hparams, overrides=overrides), preset


def load_host_state(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    prefix: str = "",
    *,
    what: str = "checkpoint",
    ignore: Callable[[str], bool] = lambda key: False,
) -> None:
    """``model.load_state_dict`` of the keys under ``prefix`` (taken off), strictly, after
    checking names and shapes so that the error names every missing, unexpected or mis-shaped
    key (CheckpointError). ``ignore``: checkpoint keys to leave out."""
    sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix) and not ignore(k)}
    own = model.state_dict()
    missing = [k for k in own if k not in sub]
    unexpected = [k for k in sub if k not in own]
    shapes = [
        f"{prefix}{k}: {tuple(v.shape)} in the {what}, {tuple(own[k].shape)} in the model"
        for k, v in sub.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} key(s) of the model missing from the {what} "
            f"(e.g. {', '.join(prefix + k for k in missing[:5])})"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} key(s) of the {what} not in the model "
            f"(e.g. {', '.join(prefix + k for k in unexpected[:5])})"
        )
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped key(s): {'; '.join(shapes[:5])}")
    if problems:
        raise CheckpointError(
            f"the {what} does not fit the {type(model).__name__} model: "
            + "; ".join(problems)
            + " (wrong host, model= preset or a damaged checkpoint?)"
        )
    model.load_state_dict(sub, strict=True)


def _state_dicts_in(container: Any) -> list[dict]:
    """Every state dict of model weights in a container: the one read and the EMA weights."""
    from .checkpoint import STATE_DICT_KEYS, _is_state_dict

    found = []
    if _is_state_dict(container):
        return [container]
    for key in STATE_DICT_KEYS:
        if isinstance(container, Mapping) and _is_state_dict(container.get(key)):
            found.append(container[key])
    for loc in EMA_LOCATIONS:
        obj = container
        for key in loc:
            obj = obj.get(key) if isinstance(obj, Mapping) else None
        if _is_state_dict(obj) and all(obj is not f for f in found):
            found.append(obj)
    return found


def _dtype_of(state_dict: Mapping[str, Any]) -> torch.dtype:
    """The most common floating dtype of a state dict (float32 if none)."""
    counts: dict[torch.dtype, int] = {}
    for v in state_dict.values():
        if torch.is_tensor(v) and v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def _check_fit_arguments(max_tokens, fit_steps, fit_lr, seed, device) -> torch.device:
    """The fit's settings and the device, checked before any work (one ValueError naming the
    first bad one; they otherwise failed inside the fit, or did something else: fit_steps=-1 ran
    none, max_tokens=0 cropped nothing). Returns the device ("auto": CUDA if available)."""
    if not (
        max_tokens is None
        or is_count(max_tokens)
        or isinstance(max_tokens, Sequence)
        and not isinstance(max_tokens, str)
        and len(max_tokens) > 0
        and all(is_count(n) for n in max_tokens)
    ):
        raise ValueError(
            "max_tokens (fit.max_tokens) must be a positive integer, a non-empty list of them (each chain "
            f"cut at each length) or null, got {max_tokens!r}"
        )
    if not is_count(fit_steps, 0):
        raise ValueError(f"fit_steps (fit.steps) must be an integer >= 0, got {fit_steps!r}")
    if isinstance(fit_lr, bool) or not isinstance(fit_lr, (int, float)) or not fit_lr > 0:
        raise ValueError(f"fit_lr (fit.lr) must be a number > 0, got {fit_lr!r}")
    if not is_count(seed, 0) or seed >= 2**32:
        raise ValueError(f"seed (fit.seed) must be an integer in [0, 2**32), got {seed!r}")
    try:
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available here; use device=auto or cpu")
    return dev


def convert_checkpoint(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    host: str = "auto",
    model: str | nn.Module | None = None,
    model_prefix: str | None = None,
    mode: Any = "lowrank",
    rank: int | None = None,
    factor_config: FactorConfig | None = None,
    stacks: Sequence[str] | None = None,
    kinds: Sequence[str] = DEFAULT_KINDS,
    blocks: Sequence[int] | None = None,
    samples: Sequence[str | os.PathLike] | Callable[[nn.Module], object] | None = None,
    max_tokens: int | Sequence[int] | None = (32, 64),
    fit_steps: int = 300,
    fit_lr: float = 1e-3,
    seed: int = 0,
    strip: bool = False,
    use_ema: bool = False,
    allow_pickle: bool = True,
    device: str = "auto",
    write_report: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert a host checkpoint to a FlashBias one (or back, ``strip=True``); see the module
    docstring.

    Args:
        input, output: the files (``output`` must not be ``input``; its directory must exist).
        host: "auto" or "protenix" / "boltz" / "openfold3" (forces the format; a checkpoint of
            another host is an error).
        model: the preset the host model is built from (None: the host's default: Protenix
            "base", OpenFold3 "default", Boltz-2 "trunk"), or the host ``nn.Module`` itself
            (unpatched; it is left loaded with the checkpoint's weights, patched, with the
            fitted factor networks).
        model_prefix: where the model's keys sit in the checkpoint's state dict (None: "" for a
            full model, the trunk's path for Boltz-2's "trunk" preset).
        mode, rank, factor_config, stacks, kinds, blocks: as for ``patch_model``.
        samples: FASTA files of the sample proteins (None: ``data_samples/*.fasta``), every
            chain cut to each of the ``max_tokens`` lengths (an int: one; None: whole chains;
            repeated cuts left out) and run through the model with ``samples.run_samples``;
            the last chain (every cut) is held out of the fit for the reported ``heldout_error``.
            Or a callable ``run(model)`` that runs the model itself (its last fifth of calls held
            out). The factors generalise to the token counts they were fitted at: fit at the
            lengths the model will run (e.g. ``[64, 128, 256, 384]`` on a GPU).
        fit_steps, fit_lr: the Adam refinement of each factor network (0: least squares only).
        seed: seeds the factor networks' initialisation and the sample features.
        strip: turn a converted checkpoint back into a plain host one (nothing else is done).
        use_ema: build the factor networks on the EMA weights.
        allow_pickle: see ``read_checkpoint``.
        device: "auto" (CUDA if available), "cpu", "cuda", ...: where the model runs.
        write_report: also write ``<output>.report.json`` and ``<output>.report.md``.
        progress: tqdm bars.
        overwrite: replace an existing ``output`` (atomically); False: FileExistsError before
            any work.

    Returns a ConversionReport. Raises CheckpointError (bad checkpoint, wrong host, keys that do
    not fit the model, a checkpoint already converted / not converted), ValueError (output is
    the input, bad arguments), FileNotFoundError, PresetError; nothing is written then.
    """
    start = time.perf_counter()
    dev = _check_fit_arguments(max_tokens, fit_steps, fit_lr, seed, device)
    output = Path(output)
    check_output_path(output, input, overwrite=overwrite)
    ckpt = read_checkpoint(input, host, use_ema=use_ema, allow_pickle=allow_pickle)
    has_factors = any(FACTOR_KEY_MARK in k for k in ckpt.state_dict)

    if strip:
        if ckpt.metadata is None and not has_factors:
            raise CheckpointError(
                f"{input}: strip=true but the checkpoint is not a converted one (it has neither "
                f"'{METADATA_KEY}' metadata nor '*{FACTOR_KEY_MARK}*' keys)"
            )
        container = strip_checkpoint(ckpt.container)
        write_checkpoint_atomic(container, output, input_path=input)
        removed = sum(FACTOR_KEY_MARK in k for k in ckpt.state_dict)
        report = ConversionReport(
            host=ckpt.host,
            input=str(input),
            output=str(output),
            action="strip",
            keys_removed=removed,
            seconds=time.perf_counter() - start,
        )
        if write_report:
            _write_report(report, output)
        return report

    if ckpt.metadata is not None or has_factors:
        raise CheckpointError(
            f"{input}: the checkpoint is already converted (it has pairformer_fb metadata or "
            "factor-network keys): strip it first (strip=true)"
        )
    factor_config = factor_config_for(rank, factor_config)

    if isinstance(model, nn.Module):
        net, preset = model, type(model).__name__
    else:
        net, preset = build_model(ckpt.host, model, ckpt)
    prefix = (
        model_prefix
        if model_prefix is not None
        else host_module(ckpt.host, "presets").model_key_prefix(ckpt.state_dict, preset)
    )
    load_host_state(net, ckpt.state_dict, prefix)
    net.to(dev).eval()

    torch.manual_seed(seed)  # the factor networks' initialisation
    patch = patch_model(
        net, host=ckpt.host, mode=mode, factor_config=factor_config, stacks=stacks, kinds=kinds, blocks=blocks
    )
    report = ConversionReport(
        host=ckpt.host,
        input=str(input),
        output=str(output),
        action="convert",
        model=preset,
        model_prefix=prefix,
        factor_config=asdict(factor_config),
    )
    if any(e.rank is not None for e in patch.entries):
        holdout: bool | float = True
        if callable(samples):
            run, report.sample_run = samples, "given callable"
        else:
            from .samples import last_chain_share, read_fasta_sequences, run_samples

            files = sorted(DEFAULT_SAMPLES_DIR.glob("*.fasta")) if samples is None else [Path(p) for p in samples]
            if not files:
                raise FileNotFoundError(f"no sample FASTA files (looked in {DEFAULT_SAMPLES_DIR})")
            sequences = read_fasta_sequences(files, max_tokens)
            report.samples = [f"{name} ({len(seq)} residues)" for name, seq in sequences]
            share = last_chain_share(sequences)
            holdout = share if share < 1 else False  # one chain: nothing to hold out

            def run(m):
                report.sample_run = run_samples(m, ckpt.host, sequences, seed=seed, progress=progress)

        report.fits = fit_patched_model(net, run, steps=fit_steps, lr=fit_lr, holdout=holdout, progress=progress)

    # the new state dict: the read one, unchanged, plus the factor networks
    meta = make_metadata(ckpt.host, patch, factor_config, input, prefix=prefix)
    meta["model_preset"] = preset
    meta["fit"] = {
        f.path: {
            "error": f.error,
            "init_error": f.init_error,
            "svd_floor": f.svd_floor,
            "heldout_error": f.heldout_error,
        }
        for f in report.fits
    }
    factors = {k: v for k, v in net.state_dict().items() if FACTOR_KEY_MARK in k}
    write_converted(ckpt, factors, meta, output, input_path=input, prefix=prefix)
    report.modules = meta["modules"]
    report.keys_added = len(factors)
    report.seconds = time.perf_counter() - start
    if write_report:
        _write_report(report, output)
    return report


def write_converted(
    ckpt: HostCheckpoint,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping,
    output: str | os.PathLike,
    *,
    input_path: str | os.PathLike | None = None,
    prefix: str = "",
    replace: bool = False,
) -> Path:
    """Write ``ckpt``'s container with ``tensors`` (model keys without ``prefix``: the factor
    networks, and for a fine-tuning that unfroze them, host weights) put into its state dict and
    EMA weights (cast to the checkpoint's dtype, on the CPU) and ``metadata`` under
    ``"pairformer_fb"``, atomically (``write_checkpoint_atomic``; never onto ``input_path``).
    Every other key and tensor is the read one, unchanged. ``replace=False``: a key the
    checkpoint already has is an error (conversion adds keys); ``replace=True``: the keys must
    exist (fine-tuning replaces them)."""
    dtype = _dtype_of(ckpt.state_dict)
    tensors = {
        prefix + k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype) for k, v in tensors.items()
    }
    container = ckpt.make_container(ckpt.state_dict, metadata=dict(metadata))
    for sd in _state_dicts_in(container):  # the model weights and the EMA weights
        sd_prefix = _strip_prefix([k for k in sd if k != METADATA_KEY])
        for k, v in tensors.items():
            if (sd_prefix + k in sd) != replace:
                raise CheckpointError(
                    f"{input_path or ckpt.path}: the checkpoint "
                    f"{'already has' if not replace else 'has no'} key {sd_prefix + k}"
                )
            sd[sd_prefix + k] = v.clone()
    return write_checkpoint_atomic(container, output, input_path=input_path)


def _write_report(report: ConversionReport, output: Path) -> None:
    from ..cli import atomic_write

    for suffix, text in ((".report.json", json.dumps(report.as_dict(), indent=2)), (".report.md", report.markdown())):
        atomic_write(output.with_name(output.name + suffix), text)


def load_converted(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    use_ema: bool = False,
    backend: str = "auto",
    allow_pickle: bool = True,
):
    """Restore a patched model from a converted checkpoint: patch the (unpatched) host ``model``
    as the checkpoint's metadata records (stacks, kinds, per-block modes, factor config) and load
    its state dict, strictly. ``model`` is the full host model or, for a checkpoint converted on
    a part of it (e.g. Boltz-2's trunk), that part. Returns the PatchReport. Raises
    CheckpointError for a checkpoint that is not a converted one or does not fit the model (the
    model is then left unpatched)."""
    ckpt = read_checkpoint(path, use_ema=use_ema, allow_pickle=allow_pickle)
    report, prefix = patch_as_recorded(model, ckpt.metadata, what=str(path), backend=backend)
    try:
        load_host_state(model, ckpt.state_dict, prefix, what="converted checkpoint")
    except BaseException:
        unpatch_model(model)
        raise
    return report


def patch_as_recorded(
    model: nn.Module,
    meta: Mapping | None,
    *,
    what: str = "the checkpoint",
    backend: str = "auto",
    diffusion_dtype: str | None = None,
    bias_cache_gib: float | str | None = "auto",
    lean_memory: bool = True,
):
    """Patch the (unpatched) host ``model`` exactly as a converted checkpoint's metadata records
    (its modules' stacks, kinds, per-block modes and the factor config), nothing more: ``(the
    PatchReport, the state-dict prefix of the model's keys)``; ``backend``, ``diffusion_dtype``,
    ``bias_cache_gib`` and ``lean_memory`` go to ``patch_model`` as they are. ``model`` is the full host model or
    the part the checkpoint was converted on. Raises CheckpointError (the model left unpatched)
    when the metadata is missing or the patched modules differ from the recorded ones."""
    if meta is None:
        raise CheckpointError(
            f"{what}: not a converted checkpoint (no '{METADATA_KEY}' metadata); "
            "run scripts/convert_checkpoint.py on it first"
        )
    host, recorded_prefix = meta["host"], meta.get("model_prefix", "")
    if host not in HOSTS:
        raise CheckpointError(f"{what}: the metadata names an unknown host {host!r}")
    # a model holding the recorded prefix's module is the full model: its keys carry the prefix
    prefix = recorded_prefix
    if recorded_prefix:
        try:
            model.get_submodule(recorded_prefix.rstrip("."))
            prefix = ""
        except AttributeError:
            pass
    strip_len = len(prefix)  # the model is the part: its module paths lack the prefix
    modules = {p[strip_len:]: m for p, m in meta["modules"].items()}
    if not modules:
        raise CheckpointError(f"{what}: the metadata records no patched module")
    by_block = {m["block"]: m["mode"] for m in modules.values()}
    config = FactorConfig(**meta["factor_config"]) if meta.get("factor_config") else None
    report = patch_model(
        model,
        host=host,
        mode=lambda b: by_block.get(b),
        stacks=sorted({m["stack"] for m in modules.values()}),
        kinds=[k for k in KINDS if k in {m["kind"] for m in modules.values()}],
        factor_config=config,
        backend=backend,
        diffusion_dtype=diffusion_dtype,
        bias_cache_gib=bias_cache_gib,
        lean_memory=lean_memory,
    )
    try:
        got = {e.path: (e.mode, e.rank) for e in report.entries}
        want = {p: (m["mode"], m["rank"]) for p, m in modules.items()}
        if got != want:
            diff = sorted(set(got.items()) ^ set(want.items()))[:5]
            raise CheckpointError(
                f"{what}: the model's patched modules differ from the recorded ones "
                f"(path, (mode, rank)) e.g. {diff}: not the model the checkpoint was converted for"
            )
    except BaseException:
        unpatch_model(model)
        raise
    return report, prefix


__all__ = [
    "ConversionReport",
    "build_model",
    "convert_checkpoint",
    "load_converted",
    "load_host_state",
    "patch_as_recorded",
    "write_converted",
]
