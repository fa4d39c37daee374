"""Structure benchmark (the project's main job): full structure inference of a host model
(``host=``: protenix, openfold3, boltz; see hosts/structure_hosts.py, hosts/<host>/structure.py) on sample proteins,
unpatched and patched with FlashBias, timed per phase, with the agreement of the predicted
structures. See configs/benchmark.yaml and scripts/benchmark.py. The host-specific parts
(featurisation, model, forward, phases) are the host's :class:`hosts.StructureHost`; this module
is the same for every host.

For each sample: featurise (data/featurize.py, hosts/<host>/featurize.py), then for each variant
* ``original`` — the unpatched host with its best available kernels (on CUDA: cuEquivariance
  when installed, else the host's own accelerated or torch path);
* ``exact`` — ``patch_model(mode="exact")``: the same function, FlashBias kernels;
* ``lowrank`` — ``patch_model(mode="lowrank", rank=...)``: factor networks from a converted
  checkpoint, else untrained (random) ones, which the report says;
* ``original_graphs`` — the unpatched host with its per-step diffusion call CUDA-graphed
  (``pairformer_fb.graph_diffusion``), the fair baseline for ``cuda_graphs: true``;

``cuda_graphs: true`` graphs the diffusion step of the patched variants too (exact, lowrank;
patching/cuda_graphs.py: captured at the second step of a prediction, replayed for the others;
a pass-through on a CPU); the records' ``notes.cuda_graphs`` hold the wrapper's counts
(captures, replays, failed, ...). Then
run ``warmup`` untimed forwards and ``repeats`` timed ones, re-seeding torch / numpy / random
before every forward (the diffusion noise is the same in every variant, so ``original`` and
``exact`` differ only by rounding). The phases are timed by wrapping the host's methods
(CUDA-synchronised): input embedding, MSA module, Pairformer trunk (recycling, template
embedder and the trunk's Pairformer; input embedding and MSA module excluded), diffusion
sampling, confidence head, and ``other`` (the rest of the forward: distogram head, summary);
which host methods make which phase is the host's (hosts/<host>/structure.py).
Then the structure of the first timed run is written (mmCIF) and compared with the original's
and, if given, a reference structure (data/structure.py).
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import torch
from tqdm import tqdm

from ..cli import COMMON_SETTINGS, Setting, atomic_write, check_names, check_settings, check_writable_dir
from ..data.featurize import InputError, Sample, read_samples
from ..data.structure import (
    TM_METHODS,
    agreement,
    ca_coords,
    match_to_reference,
    read_ca,
    write_structure,
)
from ..hosts.structure_hosts import PHASES, StructureHost, get_host
from ..patching.patching import DIFFUSION_DTYPES
from .timing import environment, failure_status, resolve_device

VARIANTS = ("original", "exact", "lowrank", "original_graphs")
RANDOM_WEIGHTS_NOTE = (
    "no checkpoint: the model has the real architecture with RANDOM weights "
    "(pairformer_fb.hosts.presets.randomise_), so the structures are not meaningful "
    "predictions; timings and the agreement between variants are"
)


@dataclass
class Record:
    sample: str
    variant: str
    n_tokens: int
    n_atoms: int
    times_s: dict[str, float] | None = None
    peak_memory_bytes: int = 0
    tokens_per_s: float | None = None
    vs_original: dict | None = None
    vs_reference: dict | None = None
    structure_path: str | None = None
    status: str = "ok"
    notes: dict = field(default_factory=dict)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ---------------------------------------------------------------------------------------------
# phase timing


class PhaseTimer:
    """Wall time of a host's inference phases, by wrapping the model's methods that the host
    names (``StructureHost.phase_wraps``: instance attributes shadowing the class's; ``remove``
    restores them). On CUDA every time stamp is taken after ``torch.cuda.synchronize()``.

    With ``memory=True`` it also says where the memory peaks: the peak meters (GPU memory
    allocated on CUDA, the process's resident host memory where Linux lets its peak be reset)
    are read and restarted whenever a wrapped method starts or ends, and each such segment's
    peak counts for the innermost wrapped method running then (``peaks[meter][method]``: the
    highest while it ran, outside the wrapped methods it calls; Protenix's trunk is
    ``get_pairformer_output`` without its input embedding and MSA module, as its time) or,
    outside them all, for ``"after <the last method that ended>"`` (e.g. Protenix's diffusion
    conditioning, between the trunk and the sampling).
    ``peak(meter)`` is the run's overall peak. Restarting the meters is why this is opt-in: a
    caller reading ``torch.cuda.max_memory_allocated`` itself would see the last segment's."""

    def __init__(self, model, device: torch.device, host: StructureHost, memory: bool = False):
        self.model = model
        self.host = host
        self.cuda = device.type == "cuda"
        self.spans: dict[str, float] = {}
        self.stamps: dict[str, float] = {}
        self._installed: list[tuple[Any, str]] = []
        self.meters = _peak_meters(device) if memory else {}
        self.peaks: dict[str, dict[str, int]] = {}
        self._running: list[str] = []
        self._last_done: str | None = None

    def reset_memory(self) -> None:
        """Forget the peaks (the start of a series of forwards whose peaks count together)."""
        self.peaks = {name: {} for name in self.meters}
        self.begin()

    def begin(self) -> None:
        """The start of a forward: no spans, stamps or running methods yet; the meters restart
        (what happened between forwards is not counted)."""
        self.spans.clear()
        self.stamps.clear()
        self._running, self._last_done = [], None
        for reset, _ in self.meters.values():
            reset()

    def segment(self) -> None:
        """Close the current memory segment: its peaks count for the innermost method running
        (or for "after" the last one that ended); the meters restart."""
        if not self.meters:
            return
        if self._running:
            label = self._running[-1]
        else:
            label = f"after {self._last_done}" if self._last_done else "before the first phase"
        for name, (reset, read) in self.meters.items():
            value = read()
            if value is not None:
                self.peaks[name][label] = max(self.peaks[name].get(label, 0), value)
            reset()

    def peak(self, meter: str) -> int | None:
        """The highest of ``meter`` over the run (None if it was not read)."""
        values = self.peaks.get(meter, {}).values()
        return max(values) if values else None

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _wrap(self, owner, attr: str, key: str, stamp_end: str | None = None):
        inner = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            self.segment()
            self._running.append(key)
            try:
                t0 = self.now()
                out = inner(*args, **kwargs)
                t1 = self.now()
            finally:  # an out-of-memory error too: the peak it reached counts for this method
                self.segment()
                self._running.remove(key)
                self._last_done = key
            self.spans[key] = self.spans.get(key, 0.0) + (t1 - t0)
            if stamp_end:
                self.stamps[stamp_end] = t1
            return out

        setattr(owner, attr, wrapped)
        self._installed.append((owner, attr))

    def install(self) -> PhaseTimer:
        for owner, attr, key, stamp in self.host.phase_wraps(self.model):
            self._wrap(owner, attr, key, stamp)
        return self

    def remove(self) -> None:
        for owner, attr in reversed(self._installed):
            delattr(owner, attr)  # the class's method is visible again
        self._installed.clear()

    def run(self, fn):
        """Run ``fn`` (one model forward) and return (its output, {phase: seconds, total})."""
        self.begin()
        t0 = self.now()
        try:
            out = fn()
        finally:
            self.segment()  # after the last wrapped method (memory=True)
        total = self.now() - t0
        times = dict(self.host.phases(self.spans, self.stamps))
        times["other"] = max(total - sum(times.values()), 0.0)
        times["total"] = total
        return out, times


# a peak-memory meter: (restart it from the current use, read the peak since the restart)
Meter = tuple[Callable[[], object], Callable[[], int | None]]


def _peak_meters(device: torch.device) -> dict[str, Meter]:
    """(reset, read) of each peak-memory meter that can be restarted here: "gpu" (CUDA memory
    allocated) on CUDA, "host" (the process's resident memory) where Linux allows it."""
    from .timing import host_peak_bytes, host_peak_reset

    meters: dict[str, Meter] = {}
    if device.type == "cuda":
        meters["gpu"] = (
            lambda: torch.cuda.reset_peak_memory_stats(device),
            lambda: int(torch.cuda.max_memory_allocated(device)),
        )
    if host_peak_reset():
        meters["host"] = (host_peak_reset, host_peak_bytes)
    return meters


# ---------------------------------------------------------------------------------------------
# model


def read_host_checkpoint(path: str | None, host: str):
    """The checkpoint (convert.checkpoint.read_checkpoint), checked to be of ``host``."""
    if path is None:
        return None
    from ..convert.checkpoint import read_checkpoint

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint={path!r} does not exist")
    ckpt = read_checkpoint(path)
    if ckpt.host != host:
        raise ValueError(f"checkpoint={path!r} is a {ckpt.host} checkpoint, but the benchmark runs host={host}")
    return ckpt


def build_model(cfg, device: torch.device, ckpt, host: StructureHost | None = None):
    """(host model in eval mode on ``device``, model info for the report): the host's builder."""
    return (host or get_host(cfg.host)).build(cfg, device, ckpt)


def patch_variant(model, variant: str, cfg, ckpt) -> dict:
    """Patch ``model`` for ``variant``; returns what the report records about it."""
    import pairformer_fb as fb

    from ..convert.checkpoint import FACTOR_KEY_MARK

    if variant in ("original", "original_graphs"):
        return {}
    stacks = list(cfg.stacks) if cfg.stacks else None
    kinds = tuple(cfg.get("kinds") or ("triangle", "single"))
    diffusion_dtype = cfg.get("diffusion_dtype")
    dd = {"diffusion_dtype": diffusion_dtype} if diffusion_dtype else {}
    memory = {  # the diffusion attentions' cache bound, the host's lean methods
        "bias_cache_gib": cfg.get("bias_cache_gib", "auto"),
        "lean_memory": cfg.get("lean_memory", True),
    }
    if variant == "exact":
        report = fb.patch_model(
            model, mode="exact", stacks=stacks, kinds=kinds, diffusion_dtype=diffusion_dtype, **memory
        )
        return {"patched_modules": len(report), "kinds": list(kinds), **_lean(report), **dd}
    # lowrank: the converted checkpoint's factor networks if it has them, else untrained ones
    factors = {k: v for k, v in (ckpt.state_dict.items() if ckpt is not None else ()) if FACTOR_KEY_MARK in k}
    meta = ckpt.metadata if ckpt is not None else None
    if factors and meta:
        # the converted checkpoint decides what its lowrank variant patches: exactly the modules
        # (stacks, kinds, blocks, modes, rank) its metadata records, with its factor networks
        from ..convert.convert import patch_as_recorded

        report, prefix = patch_as_recorded(
            model, meta, what=f"checkpoint={cfg.checkpoint}", diffusion_dtype=diffusion_dtype, **memory
        )
        own = {k[len(prefix) :]: v for k, v in factors.items() if k.startswith(prefix)}
        _, unexpected = model.load_state_dict(own, strict=False)
        want = {k for k in model.state_dict() if FACTOR_KEY_MARK in k}
        if unexpected or want - set(own):
            raise ValueError(
                f"checkpoint={cfg.checkpoint}: its factor networks do not fit the modules its metadata "
                f"records ({len(unexpected)} unexpected, {len(want - set(own))} missing)"
            )
        entries = report.entries
        return {
            "patched_modules": len(report),
            "rank": next((e.rank for e in entries if e.rank), None),
            "kinds": sorted({e.kind for e in entries}),
            "stacks": sorted({e.stack for e in entries}),
            "factors": "from the converted checkpoint"
            + (f", fine-tuned {meta['finetune'].get('steps')} steps" if meta.get("finetune") else ""),
            "patched_as": "the checkpoint's metadata records",
            **_lean(report),
            **dd,
        }
    seed_all(cfg.seed)  # the untrained factor networks' initialisation
    report = fb.patch_model(
        model,
        mode="lowrank",
        rank=cfg.rank,
        stacks=stacks,
        kinds=kinds,
        diffusion_dtype=diffusion_dtype,
        **memory,
    )
    return {
        "patched_modules": len(report),
        "rank": cfg.rank,
        "kinds": list(kinds),
        **_lean(report),
        **dd,
        "factors": "UNTRAINED (random) factor networks: no converted checkpoint given"
        + ("; diffusion attention: truncated SVD of its fixed bias" if "diffusion" in kinds else ""),
    }


def _lean(report) -> dict:
    """The host methods the patch replaced by lean ones (patch_model's ``lean_memory``), for the
    records; nothing when there are none."""
    return {"lean_host_methods": report.lean} if report.lean else {}


def dtype_context(device: torch.device, dtype: str):
    """bf16 / fp16 autocast on CUDA, as Protenix's inference runner runs; fp32 otherwise."""
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype == "fp32":
        return contextlib.nullcontext(), "fp32"
    if device.type != "cuda":
        raise ValueError(f"dtype={dtype} needs CUDA (CPU runs fp32)")
    return torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]), dtype


# ---------------------------------------------------------------------------------------------
# the benchmark


# the scalar settings checked before any work, also where run() is called without the script
# (cli.check_settings): (key, kind, least value)
SETTINGS: tuple[Setting, ...] = (
    *COMMON_SETTINGS,  # device, warmup, repeats, seed
    ("rank", "int", 1),
    ("cuda_graphs", "bool", None),
    ("raise_errors", "bool", None),
    ("dtype", ("auto", "bf16", "fp16", "fp32"), None),
)


def check_patch_selection(cfg, host: str) -> None:
    """The patched stacks (null: the adapter's default) and kinds: non-empty lists of the names
    the host has, checked before any model work (patch_model would say so only after the build;
    an empty list used to mean the defaults)."""
    from ..hosts import KINDS, get_adapter

    if cfg.get("stacks") is not None:
        check_names(cfg.stacks, "stacks", get_adapter(host).STACKS)
    if cfg.get("kinds") is not None:
        check_names(cfg.kinds, "kinds", KINDS)


def validate(cfg) -> tuple[StructureHost, list[Sample], Any, dict]:
    """Everything checked before any model work: host (and its prerequisites), variants,
    samples, references, checkpoint."""
    check_settings(cfg, SETTINGS)
    host = get_host(cfg.host)
    host.check(cfg)
    check_names(cfg.variants, "variants", VARIANTS)
    check_patch_selection(cfg, host.name)
    check_writable_dir(cfg.output_dir, "output_dir")
    if cfg.get("diffusion_dtype") not in DIFFUSION_DTYPES:
        raise ValueError(f"diffusion_dtype must be null, bf16 or fp16, got {cfg.diffusion_dtype!r}")
    samples = read_samples(
        list(cfg.samples) if not isinstance(cfg.samples, str) else [cfg.samples],
        cfg.data_dir or Path(__file__).resolve().parents[2] / "data_samples",
    )
    refs: dict[str, tuple[np.ndarray, str, str]] = {}  # sample -> (CA coords, sequence, path)
    if cfg.reference:
        paths: dict[str, Any]  # sample -> reference file
        if isinstance(cfg.reference, str):
            if len(samples) != 1:
                raise ValueError(
                    "reference= names one file, but there are several samples: give reference={sample: path, ...}"
                )
            paths = {samples[0].name: cfg.reference}
        else:
            paths = dict(cfg.reference)
            unknown = set(paths) - {s.name for s in samples}
            if unknown:
                raise ValueError(f"reference= names samples that are not run: {sorted(unknown)}")
        refs = {k: read_ca(v) + (str(v),) for k, v in paths.items()}  # read (and checked) now
    if cfg.tm_method not in TM_METHODS:
        raise ValueError(f"tm_method must be one of {TM_METHODS}, got {cfg.tm_method!r}")
    if cfg.msa_dir and not Path(cfg.msa_dir).is_dir():
        raise InputError(f"msa_dir={cfg.msa_dir!r} is not a folder")
    ckpt = read_host_checkpoint(cfg.checkpoint, cfg.host)
    return host, samples, ckpt, refs


def run(cfg) -> dict:
    host, samples, ckpt, refs = validate(cfg)
    device = resolve_device(cfg.device)
    out = Path(cfg.output_dir)
    (out / "structures").mkdir(parents=True, exist_ok=True)

    features = {}
    for s in tqdm(samples, desc="featurise", unit="sample"):
        features[s.name] = host.featurise(s, cfg)
    model, model_info = build_model(cfg, device, ckpt, host)
    autocast, dtype = dtype_context(device, cfg.dtype)
    env = environment(device) | {"dtype": dtype}
    notes = []
    if ckpt is None:
        notes.append(RANDOM_WEIGHTS_NOTE)
    result = {
        "note": " | ".join(notes) or None,
        "environment": env,
        "model": model_info,
        "features": host.features_note,
        "config": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in _plain(cfg).items()},
        "phases": list(PHASES),
        "records": [],
    }
    records: list[Record] = []
    timer = PhaseTimer(model, device, host).install()
    jobs = [(s, v) for s in samples for v in cfg.variants]
    bar = tqdm(jobs, desc="structure benchmark", unit="run")
    try:
        for sample, variant in bar:
            bar.set_postfix_str(f"{sample.name} {variant}")
            records.append(
                _run_one(
                    host, model, timer, sample, variant, features[sample.name], cfg, ckpt, device, autocast, out, refs
                )
            )
            _agreement(records, sample, refs, cfg.tm_method)
            result["records"] = [asdict(r) for r in records]
            write_outputs(out, result)
    finally:
        timer.remove()
    plot(records, out / "time_vs_tokens.png")
    result["plot"] = "time_vs_tokens.png"
    write_outputs(out, result)
    return result


def _plain(cfg) -> dict:
    try:
        from omegaconf import OmegaConf

        # a DictConfig's container is a dict (the stub's return type covers every config's)
        return cast(dict, OmegaConf.to_container(cfg, resolve=True))
    except Exception:  # noqa: BLE001 - a plain mapping
        return dict(cfg)


def _run_one(host, model, timer, sample, variant, feats_atoms, cfg, ckpt, device, autocast, out, refs) -> Record:
    import pairformer_fb as fb

    feats, atoms = feats_atoms
    rec = Record(sample.name, variant, sample.n_tokens, atoms.array_length())
    feats_dev = {k: v.to(device) for k, v in feats.items()}
    graphs = None
    try:
        rec.notes.update(patch_variant(model, variant, cfg, ckpt))
        if variant == "original_graphs" or (cfg.get("cuda_graphs") and variant != "original"):
            graphs = fb.graph_diffusion(model)

        def forward():
            seed_all(cfg.seed)
            with torch.no_grad(), autocast:
                return host.predict(model, feats_dev)

        for _ in range(cfg.warmup):
            forward()
        runs, coords = [], None
        for _ in range(cfg.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            xyz, times = timer.run(forward)
            runs.append(times)
            if device.type == "cuda":
                rec.peak_memory_bytes = max(rec.peak_memory_bytes, int(torch.cuda.max_memory_allocated(device)))
            if coords is None:
                coords = xyz.float().cpu().numpy()
        rec.times_s = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        if graphs is not None:
            rec.notes["cuda_graphs"] = graphs.stats
        rec.tokens_per_s = sample.n_tokens / rec.times_s["total"]
        assert coords is not None  # set by the first of cfg.repeats >= 1 runs (validate)
        if not np.isfinite(coords).all():
            rec.status = "error: non-finite coordinates"
            return rec
        path = out / "structures" / f"{sample.name}_{variant}.cif"
        write_structure(path, atoms, coords, name=f"{sample.name}_{variant}")
        rec.structure_path = str(path.relative_to(out))
        rec.notes["_ca"] = ca_coords(atoms, coords).tolist()  # kept for the comparisons, dropped on output
        rec.notes["_seq"] = "".join(c.sequence for c in sample.chains)
    except Exception as e:  # noqa: BLE001 - one failing run never stops the benchmark
        rec.status = failure_status(e)
        if cfg.get("raise_errors"):
            raise
    finally:
        if graphs is not None:
            graphs.remove()
        fb.unpatch_model(model) if variant != "original" and _is_patched(model) else None
    return rec


def _is_patched(model) -> bool:
    from ..patching.patching import patched_modules

    return bool(patched_modules(model))


def _agreement(records: list[Record], sample: Sample, refs: Mapping, tm_method: str) -> None:
    """Fill vs_original / vs_reference of this sample's finished records."""
    mine = [r for r in records if r.sample == sample.name and "_ca" in r.notes]
    orig = next((r for r in mine if r.variant == "original"), None)
    for r in mine:
        ca = np.asarray(r.notes["_ca"])
        seq = r.notes["_seq"]
        if orig is not None:
            r.vs_original = agreement(np.asarray(orig.notes["_ca"]), ca, seq, tm_method)
        if sample.name in refs:
            ref_ca, ref_seq, ref_path = refs[sample.name]
            pi, ri = match_to_reference(seq, ref_seq)
            r.vs_reference = agreement(ref_ca[ri], ca[pi], "".join(seq[i] for i in pi), tm_method) | {
                "reference": ref_path
            }


def _public(rec: dict) -> dict:
    rec = dict(rec)
    rec["notes"] = {k: v for k, v in rec["notes"].items() if not k.startswith("_")}
    return rec


def write_outputs(out: Path, result: dict) -> None:
    public = dict(result)
    public["records"] = [_public(r) for r in result["records"]]
    atomic_write(out / "results.json", json.dumps(public, indent=1, allow_nan=False))
    atomic_write(out / "results.md", markdown(public))


def model_summary(m: dict) -> str:
    """The reports' line on the model (a result's ``model``): host, preset, size, weights, the
    original's triangle kernels."""
    return (
        f"Model: {m['host']} preset `{m['preset']}` ({m['model_name']}, {m['parameters']:,} parameters), "
        f"weights: {m['weights']}, host kernels of `original`: {m['kernels']['triangle_attention']}."
    )


def markdown(result: dict) -> str:
    def f(x, fmt="{:.3f}"):
        return "—" if x is None else fmt.format(x)

    env = result["environment"]
    m = result["model"]
    lines = [
        "# Structure benchmark",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        model_summary(m),
        "",
    ]
    if result.get("features"):
        lines += [f"Features: {result['features']}.", ""]
    if result.get("note"):
        lines += [f"**Note:** {result['note']}.", ""]
    lines += [
        "Times in seconds (median of the timed runs, warm-up excluded). Agreement with the unpatched "
        "(`original`) prediction on Cα atoms: RMSD after superposition (Å), lDDT, TM-score.",
        "",
        "| sample | tokens | variant | embed | MSA | trunk | diffusion | confidence | total | tokens/s | "
        "peak GiB | RMSD | lDDT | TM | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["records"]:
        t = r["times_s"] or {}
        vo = r["vs_original"] or {}
        mem = r["peak_memory_bytes"] / 2**30 if r["peak_memory_bytes"] else None
        lines.append(
            f"| {r['sample']} | {r['n_tokens']} | {r['variant']} | {f(t.get('input_embedding'))} | "
            f"{f(t.get('msa_module'))} | {f(t.get('pairformer_trunk'))} | {f(t.get('diffusion_sampling'))} | "
            f"{f(t.get('confidence_head'))} | {f(t.get('total'))} | {f(r['tokens_per_s'], '{:.1f}')} | "
            f"{f(mem, '{:.2f}')} | {f(vo.get('rmsd'), '{:.3g}')} | {f(vo.get('lddt'), '{:.4f}')} | "
            f"{f(vo.get('tm_score'), '{:.4f}')} | {r['status']} |"
        )
    if any((r["vs_original"] or {}).get("lddt_note") for r in result["records"]):
        lines += [
            "",
            "lDDT —: no Cα pair of the reference within lDDT's 15 Å inclusion radius (random weights give "
            "spread-out structures).",
        ]
    refs = [r for r in result["records"] if r["vs_reference"]]
    if refs:
        lines += [
            "",
            "Against the reference structure (Cα):",
            "",
            "| sample | variant | RMSD | lDDT | TM | reference |",
            "|---|---|---|---|---|---|",
        ]
        for r in refs:
            v = r["vs_reference"]
            lines.append(
                f"| {r['sample']} | {r['variant']} | {v['rmsd']:.3g} | {v['lddt']:.4f} | "
                f"{v['tm_score']:.4f} | {v['reference']} |"
            )
    graphed = [r for r in result["records"] if r["notes"].get("cuda_graphs")]
    if graphed:
        lines += [
            "",
            "CUDA graphs of the diffusion step (captures / replays / failed captures / eager pass-throughs): "
            + "; ".join(
                f"{r['sample']} {r['variant']}: {g['captures']} / {g['replays']} / {g['failed']} / {g['passthrough']}"
                for r in graphed
                for g in [r["notes"]["cuda_graphs"]]
            )
            + ".",
        ]
    lows = {r["notes"].get("factors") for r in result["records"] if r["variant"] == "lowrank"} - {None}
    if lows:
        lines += ["", "lowrank factors: " + "; ".join(sorted(lows)) + "."]
    return "\n".join(lines) + "\n"


def plot(records: list[Record], path: Path) -> Path | None:
    """Total and trunk time against tokens, one line per variant (matplotlib, png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.times_s]
    if not ok:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, title in ((axes[0], "total", "total inference"), (axes[1], "pairformer_trunk", "Pairformer trunk")):
        for variant in dict.fromkeys(r.variant for r in ok):
            pts = sorted((r.n_tokens, r.times_s[key]) for r in ok if r.variant == variant and r.times_s)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=variant)
        ax.set_xlabel("tokens")
        ax.set_ylabel("seconds (median)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
