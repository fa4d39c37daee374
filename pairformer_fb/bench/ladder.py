"""The ladder (issue 18): a host's full inference (``host=``: protenix, openfold3, boltz) at a
ladder of token counts, stock and patched, to find where each one stops fitting in memory and
what it costs on the way. See configs/bench_ladder.yaml and scripts/bench_ladder.py.

Inputs. Each rung's input is a real sample of exactly ``tokens`` residues made by
:func:`long_sample`: the chains of ``sources`` (sample names of data_samples/, FASTA files or
folders), in order and cycled, the last chain cut short to hit the count (copies of a chain form
one entity, a cut chain its own). It is featurised by the host as the structure benchmark
featurises its samples (hosts/<host>/featurize.py; single-sequence mode, no templates).

Runs. The structure benchmark's machinery (bench/structure.py): the host's model is built once
(``model=``, random weights unless ``checkpoint=``), the variants ``original`` (unpatched, the
host's best kernels), ``exact`` and ``lowrank`` (``patch_variant``, plus ``bias_cache_gib``),
the phases timed by wrapping the host's methods (``PhaseTimer``), every forward seeded alike.
Per rung the cycles (trunk passes), diffusion steps and samples are set on the model
(the host's ``StructureHost.schedule``): ``cycles`` / ``steps`` / ``samples`` of the config, or the preset's where
null; rungs of at least ``long_rungs.from_tokens`` tokens take at most ``long_rungs.cycles``
/ ``steps``, so that a long rung fits a device call (the records and the table say so).
Each (rung, variant) runs ``warmup`` untimed forwards and one timed forward.

Per record: ``status`` (``ok``; ``oom`` when the device ran out of memory -- outputs dropped,
memory freed, peaks reset, the ladder goes on; ``error: <type>: <message>``; ``skipped: ...``),
``peak_gib`` (``torch.cuda.max_memory_allocated`` over the forwards, an OOM's too; null on a
CPU), ``peak_host_gib`` (the process's peak resident memory in the run, Linux's VmHWM;
``host_start_gib`` at its start), where each peaked (``notes.peak_gib_during`` /
``peak_host_gib_during``: per timed host method, outside the timed methods it calls, and
``"after <method>"`` between them; the table's "peaks in"; with ``memory_detail=true`` also
``notes.peak_gib_in_modules``: the GPU peak per module of the block stacks, bench/module_peaks.py),
``seconds`` per phase, ``cycles`` / ``steps`` / ``samples`` and whether ``reduced``, the first
sample's Cα RMSD to the original's (``rmsd_vs_original``), and the patched variants' bias-cache
statistics (``notes.bias_cache``). Outputs (atomic,
rewritten after every run): ``results.json`` (``{"environment", "model", "config",
"records": [...]}``), ``results.md``, ``ladder.png`` (peak GiB and seconds against tokens,
stock against patched). An ``output_dir`` that already holds ``results.json`` is an error
unless ``overwrite=true`` (replace it) or ``resume=true`` (same settings: its ok / oom runs stay,
the runs it lacks are added; one ladder over several device calls). ``time_budget_s``: runs that
would end past it are ``skipped``; so are runs whose host memory would not fit
(``host_memory_check``, on by default; both estimates in bench/ladder_skips.py), because a
process past the host's memory is ended by the kernel, not given an error, and the ladder with
it; ``host_memory_check=isolate`` runs those in a child process instead
(bench/ladder_isolated.py: measured where they fit, ``oom`` where the system ends the child).

Where the O(N^2) memory is (N tokens, c_z = 128). Measured on one H200 for Protenix's patched
exact variant (benchmarks/ladder_h200/, 6,144 tokens, 5 samples): 129.5 GiB of GPU memory at
the peak, reached alike in the MSA module, the diffusion sampling and the confidence head, and
120.7 GiB in the trunk; 111.7 GiB of host memory in the confidence head.
* The pair representation z [N, N, c_z] (bf16 in the trunk, fp32 in the host's ``pair_z`` and
  its fp32 confidence head) and the relative-position features ``relp`` [N, N, 139] fp32, held
  by the host for the prediction; ``lean_memory`` (hosts/protenix/lean.py) builds ``relp`` with
  uint8 one-hots (100.85 -> 38.28 GiB before the trunk at 6,144), makes ``pair_z`` in rows and
  gives ``relp`` back when the confidence head starts.
* The diffusion attention's bias, 16 heads x N^2 per block, cached within ``bias_cache_gib``
  (``auto``: half the free memory; 25.3 GiB held at 6,144, 260 refusals; beyond it a block
  recomputes its bias bit-identically, in row chunks of ``PAIR_CHUNK_BYTES``);
  dropped when the confidence head starts; ``lowrank`` holds SVD factors [H, N, R].
* Our triangle attentions per call: the normalised z and the dense bias [H, N, N] whole, the
  q / k / v / gate projection per chunk of rows (2 GiB, ``chunk_budget_bytes``), one update
  [N, N, c_z]. The triangle multiplications are the host's (cuEquivariance when installed).
* Host memory: Protenix keeps every sample's pae / pde logits ([N, N, 64] fp32) in host memory
  beyond 2,000 tokens; one sample per confidence-head call holds 2 x samples + 2 of them
  (measured: 12 blocks of 9 GiB at 6,144), the host's loop 3 x samples. The outputs alone are
  122.5 GiB at 7,168 tokens: past a 128 GiB machine whatever the GPU does.
* Boltz-2 hands every diffusion layer a slice of one [N, N, H x layers] bias the host computes
  per trunk pass; our cache adds a head-major fp32 copy per layer, within the same budget."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

from ..cli import (
    COMMON_SETTINGS,
    Setting,
    atomic_write,
    check_names,
    check_results_not_replaced,
    check_settings,
    check_writable_dir,
    one_line,
    positive_int,
)
from ..data.featurize import DATA_SAMPLES, Chain, InputError, Sample, chain_letters, read_samples
from ..data.structure import ca_coords, ca_rmsd
from ..hosts.structure_hosts import PHASES, get_host
from ..modules.bias_cache import GIB, check_bias_cache_gib
from ..patching.patching import DIFFUSION_DTYPES, patched_modules
from .ladder_isolated import run_isolated
from .ladder_skips import over_budget, over_host_memory
from .module_peaks import ModulePeaks, detail_modules
from .structure import (
    RANDOM_WEIGHTS_NOTE,
    PhaseTimer,
    build_model,
    check_patch_selection,
    dtype_context,
    model_summary,
    patch_variant,
    read_host_checkpoint,
    resolve_device,
    seed_all,
)
from .timing import (
    environment,
    failure_status,
    host_available_bytes,
    host_resident_bytes,
)

VARIANTS = ("original", "exact", "lowrank")
DETAIL_TOP = 12  # memory_detail: the modules with the highest GPU peaks kept per record
LABELS = {"original": "stock (original)", "exact": "patched exact", "lowrank": "patched lowrank"}


# ---------------------------------------------------------------------------------------------
# long inputs


def long_sample(sources: Sequence[Sample], n_tokens: int, name: str | None = None) -> Sample:
    """A sample of exactly ``n_tokens`` residues: the chains of ``sources`` in order, cycled,
    the last one cut to its first residues. Chains get ids A, B, ..., Z, AA, ...; identical
    sequences form one entity (:class:`Sample`), so repeated chains are copies of an entity."""
    if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    pool = [c for s in sources for c in s.chains]
    if not pool:
        raise InputError("sources hold no chains to repeat")
    chains: list[Chain] = []
    left, i = n_tokens, 0
    while left > 0:
        src = pool[i % len(pool)]
        seq = src.sequence[:left]
        chains.append(Chain(chain_letters(len(chains)), f"{src.name}_{i // len(pool) + 1}", seq))
        left -= len(seq)
        i += 1
    return Sample(name or f"ladder_{n_tokens}", Path(sources[0].path), chains)


# ---------------------------------------------------------------------------------------------
# cycles / steps / samples: each host's StructureHost.schedule (hosts/<host>/structure.py)

SCHEDULE_KEYS = ("cycles", "steps", "samples")


def rung_schedule(cfg, n_tokens: int, preset: Mapping[str, int]) -> tuple[dict, bool]:
    """(cycles, steps, samples) of the rung: the config's, the preset's where null; a long rung
    (``long_rungs.from_tokens`` or more) takes at most ``long_rungs.cycles`` / ``steps``. And
    whether that reduced them."""
    base = {k: cfg.get(k) if cfg.get(k) is not None else preset[k] for k in SCHEDULE_KEYS}
    long = cfg.get("long_rungs") or {}
    values = dict(base)
    if long.get("from_tokens") is not None and n_tokens >= long["from_tokens"]:
        values.update({k: min(base[k], long[k]) for k in ("cycles", "steps") if long.get(k) is not None})
    return values, values != base


# ---------------------------------------------------------------------------------------------
# records


@dataclass
class Record:
    host: str
    variant: str
    tokens: int
    n_atoms: int
    status: str = "ok"
    peak_gib: float | None = None
    peak_host_gib: float | None = None  # the process's peak resident host memory (Linux VmHWM)
    host_start_gib: float | None = None  # its resident host memory when the run started
    seconds: dict[str, float] | None = None
    cycles: int = 0
    steps: int = 0
    samples: int = 0
    reduced: bool = False
    featurise_s: float | None = None
    rmsd_vs_original: float | None = None
    date: str | None = None  # of the call that ran it (resume=true gathers several calls)
    notes: dict = field(default_factory=dict)


# what the records of one results.json must share for resume=true to add to them
RESUME_KEYS = (
    "host",
    "model",
    "checkpoint",
    "sources",
    "samples",
    "kinds",
    "stacks",
    "kernels",
    "rank",
    "dtype",
    "diffusion_dtype",
    "bias_cache_gib",
    "lean_memory",
    "cuda_graphs",
    "overrides",
    "seed",
)


def _previous(cfg, out: Path) -> dict | None:
    """The results already in ``output_dir`` that this run adds to (``resume=true``), None when
    there are none; an error when there are and neither resume nor overwrite is given, or they
    were made with other settings."""
    check_results_not_replaced(cfg)  # for callers of run() too, not only the script's main
    path = out / "results.json"
    if not path.exists() or (cfg.overwrite and not cfg.get("resume")):
        return None
    try:
        previous = json.loads(path.read_text())
        old = previous["config"]
        records = [Record(**r) for r in previous["records"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"resume=true: {path} is not a ladder's results.json ({type(e).__name__}: {e})") from None
    now = _plain(cfg)
    differ = [f"{k}: {old.get(k)!r} -> {now.get(k)!r}" for k in RESUME_KEYS if old.get(k) != now.get(k)]
    if differ:
        raise ValueError(
            f"resume=true: output_dir={cfg.output_dir} holds results of other settings ({'; '.join(differ)}); "
            "give those settings, another output_dir or overwrite=true"
        )
    previous["records"] = records
    return previous


# the scalar settings checked before any work (cli.check_settings): (key, kind, least value)
SETTINGS: tuple[Setting, ...] = (
    *COMMON_SETTINGS,  # device, warmup, seed
    ("rank", "int", 1),
    ("lean_memory", "bool", None),
    ("memory_detail", "bool", None),
    ("dtype", ("auto", "bf16", "fp16", "fp32"), None),
)


def validate(cfg):
    """Everything checked before any model work: host, rungs, variants, schedule, memory bound,
    sources, output folder (and the results resumed), checkpoint. Returns (host, sorted token
    counts, source samples, checkpoint, previous results or None)."""
    check_settings(cfg, SETTINGS)
    host = get_host(cfg.host)
    host.check(cfg)
    tokens = list(cfg.tokens) if not isinstance(cfg.tokens, (int, str)) else [cfg.tokens]
    if not tokens:
        raise ValueError("tokens is empty: give the rungs, e.g. tokens=[1024,2048]")
    for t in tokens:
        positive_int(t, f"tokens: every rung (a token count) ({list(tokens)})")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"tokens names a rung twice: {list(tokens)}")
    check_names(cfg.variants, "variants", VARIANTS)
    check_patch_selection(cfg, host.name)
    for k in SCHEDULE_KEYS:
        positive_int(cfg.get(k), k, allow_null=True)
    long = cfg.get("long_rungs") or {}
    unknown = set(long) - {"from_tokens", "cycles", "steps"}
    if unknown:
        raise ValueError(f"long_rungs takes from_tokens, cycles and steps, got {sorted(unknown)}")
    for k in ("from_tokens", "cycles", "steps"):
        positive_int(long.get(k), f"long_rungs.{k}", allow_null=True)
    if cfg.get("diffusion_dtype") not in DIFFUSION_DTYPES:
        raise ValueError(f"diffusion_dtype must be null, bf16 or fp16, got {cfg.diffusion_dtype!r}")
    check_bias_cache_gib(cfg.bias_cache_gib)
    budget = cfg.get("time_budget_s")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ValueError(f"time_budget_s must be a number of seconds > 0 or null, got {budget!r}")
    if cfg.get("memory_detail") and cfg.get("cuda_graphs"):
        raise ValueError("memory_detail=true needs cuda_graphs=false (module hooks do not run in graph replays)")
    check = cfg.get("host_memory_check", True)
    if not (isinstance(check, bool) or check == "isolate"):
        raise ValueError(f"host_memory_check must be true, false or isolate, got {cfg.host_memory_check!r}")
    previous = _previous(cfg, check_writable_dir(cfg.output_dir, "output_dir"))
    specs = [cfg.sources] if isinstance(cfg.sources, str) else list(cfg.sources)
    sources = read_samples(specs, cfg.data_dir or DATA_SAMPLES)
    ckpt = read_host_checkpoint(cfg.checkpoint, cfg.host)
    return host, sorted(tokens), sources, ckpt, previous


# ---------------------------------------------------------------------------------------------
# the ladder


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    # a DictConfig's container is a dict (the stub's return type covers every config's)
    return cast(dict, OmegaConf.to_container(cfg, resolve=True)) if not isinstance(cfg, dict) else dict(cfg)


def host_config(cfg):
    """The config the structure benchmark's host code and ``patch_variant`` read: the ladder's,
    with ``msa_dir`` null (single-sequence mode: no MSAs for the made-up samples)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({**_plain(cfg), "msa_dir": None})


def run(cfg) -> dict:
    start = time.perf_counter()  # time_budget_s counts from here: model build and featurisation included
    host, tokens, sources, ckpt, previous = validate(cfg)
    device = resolve_device(cfg.device)
    plain = _plain(cfg)
    hcfg = host_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    model, model_info = build_model(hcfg, device, ckpt, host)
    autocast, dtype = dtype_context(device, cfg.dtype)
    preset = host.schedule(model)
    available = host_available_bytes()  # at the start, the model built
    timer = PhaseTimer(model, device, host, memory=True)  # its meters: what this machine can measure
    env = environment(device) | {
        "dtype": dtype,
        "peak_memory": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "not measured on a CPU (peak_gib is null)",
        "peak_host_memory": "the process's peak resident memory (Linux VmHWM, reset before each run)"
        if "host" in timer.meters
        else "not measured (peak_host_gib is null where the peak cannot be reset: not Linux)",
        "host_memory_available_gib": None if available is None else round(available / GIB, 1),
    }
    result = {
        "note": RANDOM_WEIGHTS_NOTE if ckpt is None else None,
        "environment": env,
        "model": model_info | {"preset_schedule": preset},
        "features": host.features_note,
        "sources": [{"name": s.name, "tokens": s.n_tokens, "chains": len(s.chains)} for s in sources],
        "config": plain,
        "phases": list(PHASES),
        "records": [],
    }
    # resume=true: the runs the results already hold with a final status (ok / oom) stay; the
    # others (errors, skipped) run again if asked for
    records = [r for r in (previous or {}).get("records", []) if r.status in ("ok", "oom")]
    if previous:
        result["earlier_calls"] = previous.get("earlier_calls", []) + [previous["environment"]]
    done = {(r.tokens, r.variant) for r in records}
    jobs = {n: [v for v in cfg.variants if (n, v) not in done] for n in tokens}
    timer.install()
    bar = tqdm(total=sum(map(len, jobs.values())), desc="ladder", unit="run")
    try:
        for n, variants in ((n, v) for n, v in jobs.items() if v):
            sample = long_sample(sources, n)
            t0 = time.perf_counter()
            feats, atoms = host.featurise(sample, hcfg)
            featurise_s = time.perf_counter() - t0
            values, reduced = rung_schedule(cfg, n, preset)
            used = host.schedule(model, values)
            cas = {}  # variant -> the first sample's C-alpha coordinates
            for variant in variants:
                bar.set_postfix_str(f"{n} tokens, {variant}")
                rec = Record(cfg.host, variant, n, atoms.array_length(), reduced=reduced, featurise_s=featurise_s)
                rec.cycles, rec.steps, rec.samples = used["cycles"], used["steps"], used["samples"]
                rec.date = env["date"]
                over_time = over_budget(cfg, records, rec, time.perf_counter() - start)
                over_memory = None if over_time else over_host_memory(cfg, records, rec)
                skip = over_time or over_memory
                if over_memory and cfg.get("host_memory_check") == "isolate":
                    run_isolated(cfg, rec, over_memory)
                elif skip:
                    rec.status = skip
                else:
                    cas[variant] = _run_one(host, model, timer, feats, atoms, rec, hcfg, ckpt, device, autocast)
                records.append(rec)
                for r in records:  # against the original of the same rung and call
                    ca_variant, ca_original = cas.get(r.variant), cas.get("original")
                    if r.tokens == n and r.date == rec.date and ca_variant is not None:
                        if r.variant != "original" and ca_original is not None:
                            r.rmsd_vs_original = ca_rmsd(ca_original, ca_variant)
                records.sort(key=lambda r: (r.tokens, VARIANTS.index(r.variant)))
                result["records"] = [asdict(r) for r in records]
                write_outputs(out, result)
                bar.update()
            del feats
            _free(device)
        result["records"] = [asdict(r) for r in records]
    finally:
        bar.close()
        timer.remove()
    result["plot"] = plot(records, out / "ladder.png")
    write_outputs(out, result)
    return result


def _free(device: torch.device) -> None:
    """Collect what a run left and give the cached device memory back (the peaks are the
    PhaseTimer's: ``reset_memory`` restarts them at a run's start)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def is_oom(e: BaseException) -> bool:
    """The device (torch.OutOfMemoryError) or the host's allocator ran out of memory."""
    return isinstance(e, torch.OutOfMemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(e)


def _run_one(host, model, timer, feats, atoms, rec: Record, cfg, ckpt, device, autocast) -> np.ndarray | None:
    """One (rung, variant): patch, warm up, one timed forward; fills ``rec``; returns the first
    sample's Cα coordinates (None unless ok). Never raises unless ``raise_errors``."""
    import pairformer_fb as fb

    # None once the run is over (finally drops it, the closure's reference with it)
    feats_dev: dict[str, torch.Tensor] | None = {k: v.to(device) for k, v in feats.items()}
    graphs, xyz, ca, failure = None, None, None, None
    detail: ModulePeaks | None = None
    _free(device)
    resident = host_resident_bytes()
    rec.host_start_gib = None if resident is None else resident / GIB
    timer.reset_memory()  # the peaks of the warm-ups and the timed forward count together
    try:
        rec.notes.update(patch_variant(model, rec.variant, cfg, ckpt))
        if cfg.get("memory_detail") and "gpu" in timer.meters:  # after patching: the modules that run
            detail = ModulePeaks(timer.meters).install(detail_modules(model))
        if cfg.get("cuda_graphs") and rec.variant != "original":
            graphs = fb.graph_diffusion(model)

        def forward():
            seed_all(cfg.seed)
            with torch.no_grad(), autocast:
                return host.predict(model, feats_dev)

        for _ in range(cfg.warmup):  # timer.run: what finished says where a failure happened
            timer.run(forward)
        xyz, rec.seconds = timer.run(forward)
        coords = xyz.float().cpu().numpy()
        if not np.isfinite(coords).all():
            rec.status = "error: non-finite coordinates"
        else:
            ca = ca_coords(atoms, coords)
    except Exception as e:  # noqa: BLE001 - one failing run never stops the ladder
        rec.status = "oom" if is_oom(e) else failure_status(e)
        if rec.status == "oom":
            rec.notes["oom"] = one_line(e)[:300]
            rec.notes["oom_during"] = _unfinished(host, model, timer)
        failure = e if cfg.get("raise_errors") and rec.status != "oom" else None
    finally:
        # an OOM's too: the peak before it, and in which method
        for meter, attr in (("gpu", "peak_gib"), ("host", "peak_host_gib")):
            peak = timer.peak(meter)
            setattr(rec, attr, None if peak is None else peak / GIB)
            if timer.peaks.get(meter):
                rec.notes[f"{attr}_during"] = {k: round(v / GIB, 3) for k, v in timer.peaks[meter].items()}
        if detail is not None:
            detail.remove()
            top = sorted(detail.peaks.items(), key=lambda kv: -kv[1])[:DETAIL_TOP]
            rec.notes["peak_gib_in_modules"] = {k: round(v / GIB, 3) for k, v in top}
        if graphs is not None:
            rec.notes["cuda_graphs"] = graphs.stats
            graphs.remove()
        budget = _bias_budget(model)
        if budget is not None:
            rec.notes["bias_cache"] = budget.stats()
        if patched_modules(model):
            fb.unpatch_model(model)
        xyz = feats_dev = graphs = None  # the run's tensors (the closure's too), before collecting
        _free(device)
    if failure is not None:
        raise failure
    return ca


def _unfinished(host, model, timer) -> str | None:
    """The first of the host's timed methods (``phase_wraps`` order) that had not finished when
    a forward failed: where it ran out of memory (roughly: code between two timed methods counts
    to the later one)."""
    for _, _, key, _ in host.phase_wraps(model):
        if key not in timer.spans:
            return key
    return None


def _bias_budget(model):
    """The bias-cache budget the patched modules of ``model`` share (None if none)."""
    for m in patched_modules(model).values():
        cache = getattr(m.flash_bias, "bias_cache", None)
        if getattr(cache, "budget", None) is not None:
            return cache.budget
    return None


# ---------------------------------------------------------------------------------------------
# outputs


def write_outputs(out: Path, result: dict) -> None:
    atomic_write(out / "results.json", json.dumps(result, indent=1, allow_nan=False))
    atomic_write(out / "results.md", markdown(result))


def markdown(result: dict) -> str:
    def f(x, fmt="{:.2f}"):
        return "—" if x is None else fmt.format(x)

    env, m = result["environment"], result["model"]
    cfg = result["config"]
    lines = [
        "# Ladder: full inference against token count",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        f"{model_summary(m)} "
        f"Inputs: the chains of {', '.join(s['name'] for s in result['sources'])} repeated to each token count. "
        f"Patched: kinds {cfg.get('kinds')}, bias cache bound `bias_cache_gib={cfg.get('bias_cache_gib')}`"
        + (f", diffusion_dtype={cfg['diffusion_dtype']}" if cfg.get("diffusion_dtype") else "")
        + ".",
        "",
    ]
    if result.get("note"):
        lines += [f"**Note:** {result['note']}.", ""]
    if result.get("earlier_calls"):
        lines += [
            f"Runs of {len(result['earlier_calls']) + 1} calls (resume=true; the environment above is the "
            "last one's, results.json's earlier_calls the others'); each record's date says which.",
            "",
        ]
    lines += [
        "Seconds of one timed forward (warm-up excluded) per phase; peak GiB: torch.cuda.max_memory_allocated "
        "(for `oom`: the peak before it ran out); host GiB: the process's peak resident host memory during the "
        "run (VmHWM; all of the process's, the libraries and the model's host copy included); peaks in: the "
        'timed host method during which each peaked (outside the timed methods it calls; "after X": between X '
        "and the next timed method; flat: several within 1 %), the peaks per method in results.json's notes "
        "(peak_gib_during, peak_host_gib_during). "
        "cycles / steps / samples: trunk passes, diffusion steps, "
        "diffusion samples; * = fewer than the shorter rungs (long_rungs).",
        "",
        "| tokens | atoms | variant | status | peak GiB | host GiB | peaks in (GPU / host) | trunk | diffusion | "
        "confidence | total | cycles / steps / samples | RMSD to original Å | bias cache GiB peak held / refused |",
        "|---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in result["records"]:
        t = r["seconds"] or {}
        bc = r["notes"].get("bias_cache")
        cache = f"{bc['peak_held_gib']:.3g} / {bc['refused']}" if bc else "—"
        lines.append(
            f"| {r['tokens']} | {r['n_atoms']} | {r['variant']} | {r['status']} | {f(r['peak_gib'])} | "
            f"{f(r.get('peak_host_gib'))} | {_peaks_in(r['notes'])} | "
            f"{f(t.get('pairformer_trunk'))} | {f(t.get('diffusion_sampling'))} | {f(t.get('confidence_head'))} | "
            f"{f(t.get('total'))} | {r['cycles']} / {r['steps']} / {r['samples']}{' *' if r['reduced'] else ''} | "
            f"{f(r['rmsd_vs_original'], '{:.3g}')} | {cache} |"
        )
    if any(r["reduced"] for r in result["records"]):
        long = cfg.get("long_rungs") or {}
        lines += [
            "",
            f"\\* Reduced schedule: rungs of {long.get('from_tokens')} tokens or more ran "
            f"{long.get('cycles') or 'the same'} cycle(s) and {long.get('steps') or 'the same number of'} "
            "diffusion steps (long_rungs), to fit a device call; their times are not comparable with the "
            "shorter rungs', only between variants of the same rung.",
        ]
    if env.get("peak_memory", "").startswith("not measured"):
        lines += ["", "Peak memory is not measured on a CPU."]
    return "\n".join(lines) + "\n"


def _peaks_in(notes: dict) -> str:
    """Where a run's GPU and host memory peaked: the timed host method (or "after" one) with the
    highest peak (``PhaseTimer(memory=True)``); "flat" when several lie within 1 % of it (small
    runs, where the process's own memory is all there is)."""
    where = []
    for key in ("peak_gib_during", "peak_host_gib_during"):
        peaks = notes.get(key) or {}
        top = max(peaks.values(), default=0)
        if not top:
            where.append("—")
        elif sum(v >= 0.99 * top for v in peaks.values()) > 1:
            where.append("flat")
        else:
            where.append(max(peaks, key=peaks.__getitem__))
    return " / ".join(where)


def plot(records: Sequence[Record], path: Path) -> str | None:
    """Peak GiB and total seconds against tokens, one line per variant (stock vs patched); an
    OOM rung is an x at its peak before the failure; hollow markers: reduced schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True, constrained_layout=True)
    for variant in dict.fromkeys(r.variant for r in records):
        mine = [r for r in records if r.variant == variant]
        for ax, value in ((axes[0], lambda r: r.peak_gib), (axes[1], lambda r: (r.seconds or {}).get("total"))):
            ok = [(r.tokens, value(r), r.reduced) for r in mine if r.status == "ok" and value(r) is not None]
            (line,) = ax.plot([p[0] for p in ok], [p[1] for p in ok], "-", label=LABELS[variant])
            for x, y, reduced in ok:
                ax.plot([x], [y], "o", color=line.get_color(), mfc="none" if reduced else line.get_color())
            oom = [(r.tokens, r.peak_gib) for r in mine if r.status == "oom"]
            if oom and ax is axes[0]:
                ax.plot([p[0] for p in oom], [p[1] or 0 for p in oom], "x", ms=10, color=line.get_color())
        host = [(r.tokens, r.peak_host_gib) for r in mine if r.status == "ok" and r.peak_host_gib is not None]
        if host:
            axes[0].plot([p[0] for p in host], [p[1] for p in host], "--", color=line.get_color(), alpha=0.7)
    axes[0].set_ylabel("peak memory (GiB)")
    axes[0].set_title("peak GPU memory (x: out of memory); dashed: host")
    if all(r.peak_gib is None for r in records):
        axes[0].text(
            0.5, 0.9, "GPU memory: not measured on a CPU", ha="center", va="center", transform=axes[0].transAxes
        )
    axes[1].set_ylabel("seconds per prediction")
    axes[1].set_title("total time (hollow: reduced cycles / steps)")
    for ax in axes:
        ax.set_xlabel("tokens")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


__all__ = [
    "VARIANTS",
    "Record",
    "host_config",
    "is_oom",
    "long_sample",
    "markdown",
    "rung_schedule",
    "run",
    "validate",
]
