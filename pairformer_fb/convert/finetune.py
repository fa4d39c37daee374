"""Fine-tune the factor networks of a converted checkpoint (``scripts/finetune.py``,
configs in ``configs/finetune/``).

Teacher and student are the same patched host model: the teacher is its "exact" mode (the dense
biases, i.e. the original model), the student its "lowrank" mode (the factor networks). One
forward in "distill" mode runs the exact trunk and gives, per patched module, the bias
distillation loss (``bias_approximation_loss``: the relative squared error of phi_q phi_k^T
against the true bias). The cycles before the last run in "exact" mode; in the last, each module
keeps the ``BiasSample`` of its loss (``defer_distill_loss``) and the losses of all the factor
networks are computed after the trunk as batched products (``batched_approximation_losses``:
a few dozen kernels instead of ~70 per network). An optional output-level term runs
the trunk again in "lowrank" mode and adds the relative squared deviation of its single and pair
representations from the exact ones. ``loss = bias_weight * mean_blocks(bias loss) +
output_weight * (rel_dev(s) + rel_dev(z))``.

Only the factor networks train by default (``train.unfreeze``: regexes of more parameter names).
Host: Protenix (its trunk: ``Protenix.get_pairformer_output``, recycling as the host trains:
``N_cycle`` drawn from ``RandomState(step)`` in 1..N_cycle, gradients in the last cycle only).

Data: FASTA files / folders / sample names (``featurize.read_samples``), featurised offline once
(``hosts.protenix.featurize.protenix_features``), a random contiguous crop of ``crop_size`` tokens per step.
The sample and crop of step t on rank r are a function of (seed, t, r) only, so a resumed run
sees the same data as an uninterrupted one; training checkpoints also hold the optimizer,
scheduler, step and every RNG state (``resume=PATH``).

Speed: ``trainer.cuda_graphs=true`` replays the pairformer stack of the recycling cycles without
gradients from CUDA graphs (``graph_recycling``): a fine-tuning step at 384-token crops is bound by
kernel launches (benchmarks/session9/finetune_cycles_cpu/), and those cycles are most of its launches.

Several processes: ``torchrun --nproc_per_node=K scripts/finetune.py ...`` (DDP; nccl on CUDA,
gloo on CPU); rank 0 logs, validates and writes.

Outputs under ``output_dir``: ``train_log.csv`` (per step), ``validation.csv`` (per validation,
per block), ``checkpoints/step_<N>.pt`` (training state; ``trainer.checkpoint_dir`` puts them
elsewhere), the converted checkpoint ``<output_name>`` (an absolute path puts it elsewhere: the
input's container with the trained factors and the run's config snapshot in its
``pairformer_fb`` metadata under ``finetune``) and ``finetune_report.json`` / ``.md``.

Limits: a patched module called several times in one cycle (e.g. inside a template stack run
per template) contributes the loss of its last call only; with ``train.unfreeze`` the teacher
is the current model (an unfrozen bias projection moves the target too).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..cli import atomic_write, check_results_not_replaced, check_writable_dir
from ..hosts.protenix.training import protenix_trunk, recycling_graph_modules
from ..modules.factor_network import BiasSample, FactorNetwork, batched_approximation_losses
from ..patching.cuda_graphs import GraphHandle, graph_module
from ..patching.patching import patched_modules
from .checkpoint import (
    FACTOR_KEY_MARK,
    CheckpointError,
    check_output_path,
    read_checkpoint,
    write_checkpoint_atomic,
)
from .convert import build_model, load_converted, write_converted
from .finetune_settings import check_finetune_settings
from .training_data import ProteinCrops, split_samples


def relative_deviation(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """||x - ref||^2 / ||ref||^2 in fp32."""
    x, ref = x.float(), ref.float()
    return (x - ref).square().sum() / ref.square().sum().clamp_min(torch.finfo(torch.float32).tiny)


class DistillLoss(nn.Module):
    """The training objective as a module (what DDP wraps): ``forward(feats, n_cycle)`` ->
    ``(loss, {"bias_loss", "output_loss", per-block bias losses})``."""

    def __init__(
        self, model: nn.Module, trained: Sequence[str], *, bias_weight: float = 1.0, output_weight: float = 0.0
    ):
        super().__init__()
        self.model = model
        self.trained = list(trained)
        self.bias_weight, self.output_weight = float(bias_weight), float(output_weight)
        if self.bias_weight < 0 or self.output_weight < 0 or self.bias_weight + self.output_weight == 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got bias_weight={bias_weight}, "
                f"output_weight={output_weight}"
            )
        self.wrappers = {p: w for p, w in patched_modules(model).items() if w.flash_bias.factor_network is not None}

    def set_mode(self, mode: str) -> None:
        for w in self.wrappers.values():
            w.mode = mode

    def distill_in_last_cycle(self, n_cycle: int) -> Callable[[int], None]:
        """``protenix_trunk``'s ``on_cycle``: the exact mode in the recycling cycles before the
        last, the distill mode in the last. The trunk computes the same (the distill mode attends
        with the exact bias), but the factor networks and the losses of the earlier cycles,
        which the last cycle's overwrite unused, are not computed."""
        return lambda cycle: self.set_mode("distill" if cycle == n_cycle - 1 else "exact")

    def distill_trunk(self, feats, n_cycle: int, *, grad: bool) -> tuple[tuple, dict[str, torch.Tensor]]:
        """The exact trunk's ``(s_inputs, s, z)`` and ``{path: bias approximation loss}`` of the
        wrappers its last cycle called. The modules defer their losses (``defer_distill_loss``:
        each keeps the ``BiasSample`` it would compute its loss from), computed after the trunk by
        ``batched_approximation_losses``: a few dozen kernels for all the factor networks instead
        of ~70 each (benchmarks/session10/finetune_graph_ops_cpu/)."""
        self.set_mode("distill")
        for w in self.wrappers.values():
            w.last_distill_loss = w.last_distill_sample = None
            w.flash_bias.defer_distill_loss = True
        try:
            out = protenix_trunk(self.model, feats, n_cycle, grad=grad, on_cycle=self.distill_in_last_cycle(n_cycle))
        finally:
            for w in self.wrappers.values():
                w.flash_bias.defer_distill_loss = False
        sampled: dict[str, tuple[FactorNetwork, BiasSample]] = {}
        for p, w in self.wrappers.items():
            if w.last_distill_sample is not None:
                assert w.flash_bias.factor_network is not None  # self.wrappers: the modules with one
                sampled[p] = (w.flash_bias.factor_network, w.last_distill_sample)
        losses = dict(zip(sampled, batched_approximation_losses(list(sampled.values()))))
        for p, w in self.wrappers.items():
            w.last_distill_sample = None  # the biases are not kept past the losses
            if p not in losses and w.last_distill_loss is not None:  # a module that computes its loss itself
                losses[p] = w.last_distill_loss
        return out, losses

    def forward(self, feats, n_cycle: int):
        (_, s_ref, z_ref), losses = self.distill_trunk(feats, n_cycle, grad=True)
        per_block = {}
        for p in self.trained:
            if p not in losses:
                raise ValueError(f"the trunk never called the patched module {p!r}: its factors cannot train")
            per_block[p] = losses[p]
        bias_loss = torch.stack(list(per_block.values())).mean()
        loss = self.bias_weight * bias_loss
        output_loss = bias_loss.detach().new_zeros(())
        if self.output_weight > 0:
            self.set_mode("lowrank")
            _, s, z = protenix_trunk(self.model, feats, n_cycle, grad=True)
            output_loss = relative_deviation(s, s_ref.detach()) + relative_deviation(z, z_ref.detach())
            loss = loss + self.output_weight * output_loss
        self.set_mode("lowrank")
        logs = {
            "bias_loss": bias_loss.detach(),
            "output_loss": output_loss.detach(),
            **{f"bias/{p}": v.detach() for p, v in per_block.items()},
        }
        return loss, logs


def graph_recycling(model: nn.Module, trained: Iterable[torch.Tensor], **kwargs) -> GraphHandle:
    """CUDA graphs of the trunk's pairformer stack (``recycling_graph_modules``) in the recycling
    cycles that run without gradients: every cycle but the last of a training step, and every
    cycle of validation. Each crop size (and mode) is learned at its first call, captured at
    its second and replayed from the third (``GraphedCall``): a step of n cycles on a new size
    runs 1 eager, 1 capture (~3 eager), n - 3 replays. At most ``max_graphs`` graphs are kept,
    least recently used first out (8 by default: a 384-token crop's graph holds about one eager
    pass's activations). The ``trained`` weights do not invalidate the graphs: the optimizer
    updates them in place and a replay reads them in place. The last cycle (gradients,
    "distill" mode) runs eagerly. On a CPU this is a pass-through. ``kwargs`` go to
    ``graph_module`` (e.g. ``backend`` in tests)."""
    kwargs.setdefault("max_graphs", 8)
    return graph_module(recycling_graph_modules(model), ignore_params=list(trained), **kwargs)


@torch.no_grad()
def validate(objective: DistillLoss, batches: Sequence[tuple[str, dict]], n_cycle: int, autocast) -> dict:
    """Per patched module, the mean bias-approximation error over the held-out samples, and
    the trunk-output deviation of lowrank from exact (relative squared error of s and z)."""
    per_block: dict[str, list[float]] = {p: [] for p in objective.wrappers}
    dev_s, dev_z = [], []
    for _, feats in batches:
        with autocast():
            (_, s_ref, z_ref), losses = objective.distill_trunk(feats, n_cycle, grad=False)
            for p in objective.wrappers:
                if p not in losses:
                    raise ValueError(
                        f"the trunk never called the patched module {p!r}: its factors cannot be validated"
                    )
                per_block[p].append(float(losses[p]))
            objective.set_mode("lowrank")
            _, s, z = protenix_trunk(objective.model, feats, n_cycle, grad=False)
        dev_s.append(float(relative_deviation(s, s_ref)))
        dev_z.append(float(relative_deviation(z, z_ref)))
    objective.set_mode("lowrank")
    blocks = {p: float(np.mean(v)) for p, v in per_block.items()}
    return {
        "blocks": blocks,
        "mean_block_error": float(np.mean(list(blocks.values()))),
        "single_deviation": float(np.mean(dev_s)),
        "pair_deviation": float(np.mean(dev_z)),
        "samples": [n for n, _ in batches],
    }


# ---------------------------------------------------------------------------------------------
# training


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The LR factor: linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 without)."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def _trainable(model: nn.Module, trained_paths: Sequence[str], unfreeze: Sequence[str]) -> dict[str, nn.Parameter]:
    """Freeze every parameter but the factor networks of ``trained_paths`` and those whose name
    matches a regex of ``unfreeze``; returns the trainable ones by name."""
    patterns = [re.compile(u) for u in unfreeze]
    out = {}
    for name, p in model.named_parameters():
        factor = FACTOR_KEY_MARK in name and any(name.startswith(t + ".") for t in trained_paths)
        p.requires_grad_(factor or any(r.search(name) for r in patterns))
        if p.requires_grad:
            out[name] = p
    if not out:
        raise ValueError("no parameter to train (patch.blocks / train.unfreeze select nothing)")
    return out


def _write_csv(path: Path, rows: list[dict], fields: Sequence[str]) -> None:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(fields))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, text.getvalue())


def finetune(cfg: Mapping[str, Any]) -> dict:
    """Run a fine-tuning (see the module docstring) from a plain nested config (the Hydra
    config as a dict; keys as in ``configs/finetune/finetune.yaml``). Returns a summary dict
    (rank 0: the losses per step, the validations, the output path)."""
    from tqdm.auto import tqdm

    cfg = json.loads(json.dumps(cfg))  # a plain copy: it goes into the metadata
    check_finetune_settings(cfg)
    tr, opt_cfg, sch, data, loss_cfg, patch_cfg = (
        cfg["trainer"],
        cfg["optimizer"],
        cfg["schedule"],
        cfg["data"],
        cfg["loss"],
        cfg["patch"],
    )
    rank, world, local_rank = _dist_info()
    distributed = world > 1
    use_cuda = cfg.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available()
    if cfg.get("device") == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    main = rank == 0

    checkpoint = Path(cfg["checkpoint"])
    out_dir = Path(cfg["output_dir"])
    output = out_dir / cfg["output_name"]
    ckpt_dir = Path(tr.get("checkpoint_dir") or out_dir / "checkpoints")
    state = read_training_state(cfg["resume"]) if cfg.get("resume") else None
    # the run a resume continues wrote (or will write) this output: it may replace it
    continued = state is not None and _output_of(state["config"]) == output
    if main:
        logs = ("train_log.csv", "finetune_report.json")  # an earlier run's, replaced only when asked
        check_results_not_replaced(cfg, logs, " resume=<its training checkpoint> to continue it,")
        if output.parent.is_dir():
            check_output_path(output, checkpoint, overwrite=bool(cfg.get("overwrite")) or continued)
        else:
            check_writable_dir(output.parent, "output_dir")
        check_writable_dir(ckpt_dir, "trainer.checkpoint_dir")
    train_samples, val_samples = split_samples(
        data["samples"], data.get("val_samples"), int(data["n_val"]), data.get("data_dir")
    )
    ckpt = read_checkpoint(checkpoint)
    meta = ckpt.metadata
    if meta is None:
        raise CheckpointError(
            f"checkpoint={checkpoint}: not a converted checkpoint; convert it first (scripts/convert_checkpoint.py)"
        )
    if ckpt.host != "protenix":
        raise ValueError(f"fine-tuning supports Protenix checkpoints; this one is {ckpt.host!r}")
    preset = cfg["model"].get("preset") or meta.get("model_preset")
    if not preset:
        raise ValueError("model.preset is null and the checkpoint records no model_preset: name one (model=tiny)")

    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    model: Any  # a Protenix model (its attributes, e.g. N_cycle, are Protenix's)
    model, preset = build_model(ckpt.host, preset, ckpt, overrides=cfg["model"].get("overrides"))
    load_converted(checkpoint, model)
    model.to(device).eval()
    if cfg["model"].get("n_cycle"):
        model.N_cycle = int(cfg["model"]["n_cycle"])
    n_cycle = int(model.N_cycle)

    wrappers = {p: w for p, w in patched_modules(model).items() if w.flash_bias.factor_network is not None}
    if not wrappers:
        raise ValueError(f"{checkpoint}: no patched module has a factor network (converted with mode=exact?)")
    rank_cfg = patch_cfg.get("rank")
    for p, w in wrappers.items():
        network = w.flash_bias.factor_network
        assert network is not None  # wrappers: the patched modules with a factor network
        if rank_cfg is not None and network.config.rank != rank_cfg:
            raise ValueError(
                f"patch.rank={rank_cfg} but {p} has rank {network.config.rank} in "
                "the checkpoint: convert at that rank first, or leave patch.rank null"
            )
    blocks = patch_cfg.get("blocks")
    trained = [p for p, w in wrappers.items() if blocks is None or w.site_block in set(blocks)]
    if not trained:
        raise ValueError(
            f"patch.blocks={blocks} selects none of the lowrank blocks "
            f"{sorted({w.site_block for w in wrappers.values()})}"
        )
    params = _trainable(model, trained, cfg["train"].get("unfreeze") or [])

    objective = DistillLoss(
        model, trained, bias_weight=loss_cfg["bias_weight"], output_weight=loss_cfg["output_weight"]
    )
    # the recycling cycles without gradients as CUDA graphs (opt-in: they hold one pass's activations
    # per crop size; 1.55x steps/s on an H100, benchmarks/session10/finetune_graphs_h100/; a
    # pass-through on a CPU)
    graphs = None
    if tr.get("cuda_graphs"):
        graphs = graph_recycling(model, params.values(), max_graphs=tr.get("cuda_graphs_max") or 8)
    wrapped: nn.Module = objective
    if distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            objective,
            device_ids=[device.index] if use_cuda else None,
            find_unused_parameters=bool(tr.get("find_unused_parameters", False)),
            broadcast_buffers=False,
        )

    optimizer = torch.optim.AdamW(
        params.values(),
        lr=opt_cfg["lr"],
        betas=tuple(opt_cfg["betas"]),
        eps=opt_cfg["eps"],
        weight_decay=opt_cfg["weight_decay"],
    )
    max_steps = int(tr["max_steps"])
    total = int(sch.get("total_steps") or max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, int(sch["warmup_steps"]), total, float(sch["min_lr_ratio"]))
    )

    crops = ProteinCrops(train_samples, crop_size=int(data["crop_size"]), seed=seed, msa_dir=data.get("msa_dir"))
    val = (
        ProteinCrops(
            val_samples,
            crop_size=int(data.get("val_crop_size") or data["crop_size"]),
            seed=seed,
            msa_dir=data.get("msa_dir"),
        )
        if val_samples
        else None
    )
    val_batches = (
        [(val.names[k], {n: t.to(device) for n, t in val.fixed(k).items()}) for k in range(len(val))] if val else []
    )

    bf16 = bool(tr.get("bf16", True)) and use_cuda
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)

    step, history, validations = 0, [], []
    if state is not None:
        missing = set(params) - set(state["params"])
        if missing:
            raise CheckpointError(f"resume={cfg['resume']}: no saved value for {sorted(missing)[:3]}")
        with torch.no_grad():
            for n, param in params.items():
                param.copy_(state["params"][n])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history, validations = state["step"], state["history"], state["validations"]
        set_rng_states(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])

    def save_state(path: Path) -> None:
        rngs = [rng_states()]
        if distributed:
            gathered: list[Any] = [None] * world  # all_gather_object fills it
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if main:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_checkpoint_atomic(
                {
                    "kind": "pairformer_fb.finetune",
                    "step": step,
                    "config": cfg,
                    "params": {n: p.detach().cpu().clone() for n, p in params.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "validations": validations,
                    "rng": rngs,
                },
                path,
            )

    def run_validation(tag: str) -> None:
        if main and val_batches and (not validations or validations[-1]["step"] != step):
            validations.append({"step": step, "tag": tag, **validate(objective, val_batches, n_cycle, autocast)})

    writer = None
    if main and tr.get("tensorboard"):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                f"trainer.tensorboard=true needs the tensorboard package ({e}); "
                "pip install tensorboard, or use train_log.csv"
            ) from e
        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=step + 1 if step else None)

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed check leaves nothing behind
    if main and state is None:
        run_validation("before")
    clip = float(tr.get("grad_clip") or 0)
    log_every, save_every, val_every = int(tr.get("log_every", 1)), int(tr["save_every"]), int(tr.get("val_every", 0))
    bar = tqdm(total=max_steps, initial=step, desc="fine-tuning", disable=not (main and cfg.get("progress", True)))
    start = time.perf_counter()
    steps_run = 0
    while step < max_steps:
        name, crop_start, feats = crops.pick(step, rank, world)
        feats = {k: v.to(device) for k, v in feats.items()}
        cycles = int(np.random.RandomState(step).randint(1, n_cycle + 1))  # as Protenix trains
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss, logs = wrapped(feats, cycles)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(params.values(), clip if clip > 0 else float("inf")))
        optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1
        steps_run += 1
        values = torch.stack([loss.detach().float(), logs["bias_loss"].float(), logs["output_loss"].float()])
        if distributed:
            torch.distributed.all_reduce(values)
            values /= world
        row = {
            "step": step,
            "loss": float(values[0]),
            "bias_loss": float(values[1]),
            "output_loss": float(values[2]),
            "lr": lr,
            "grad_norm": grad_norm,
            "n_cycle": cycles,
            "sample": name,
            "crop_start": crop_start,
            "n_tokens": int(feats["restype"].shape[0]),
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        bar.update(1)
        if main and step % log_every == 0:
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if writer is not None:
            for key in ("loss", "bias_loss", "output_loss", "lr", "grad_norm"):
                writer.add_scalar(f"train/{key}", row[key], step)
        if val_every and step % val_every == 0:
            run_validation("periodic")
        if save_every and step % save_every == 0:
            save_state(ckpt_dir / f"step_{step:07d}.pt")
        if main and step % log_every == 0:
            _write_csv(out_dir / "train_log.csv", history, list(row))
    bar.close()
    elapsed = time.perf_counter() - start
    run_validation("after")
    graph_stats = graphs.stats if graphs is not None else None
    if graphs is not None:
        graphs.remove()  # frees the graphs' memory pools; the model's own forward again
    if writer is not None:
        for v in validations:
            writer.add_scalar("val/mean_block_error", v["mean_block_error"], v["step"])
            writer.add_scalar("val/pair_deviation", v["pair_deviation"], v["step"])
            writer.add_scalar("val/single_deviation", v["single_deviation"], v["step"])
        writer.close()

    summary = {
        "steps": step,
        "steps_run": steps_run,
        "seconds": elapsed,
        "steps_per_second": steps_run / elapsed if elapsed > 0 else None,
        "steps_per_second_after_warmup": _rate_after_warmup(history[len(history) - steps_run :]),
        "world_size": world,
        "cuda_graphs": graph_stats,
        "history": history,
        "validations": validations,
        "output": str(output),
        "trained": trained,
    }
    if main:
        if history:
            _write_csv(out_dir / "train_log.csv", history, list(history[0]))
        if validations:
            rows = [
                {
                    "step": v["step"],
                    "tag": v["tag"],
                    "block": b,
                    "error": e,
                    "single_deviation": v["single_deviation"],
                    "pair_deviation": v["pair_deviation"],
                }
                for v in validations
                for b, e in v["blocks"].items()
            ]
            _write_csv(out_dir / "validation.csv", rows, list(rows[0]))
        new_meta = dict(meta)
        if "fit" in new_meta:  # the conversion's errors describe the factors before this fine-tuning
            new_meta["conversion_fit"] = new_meta.pop("fit")
        new_meta["finetune"] = {
            "config": cfg,
            "source": str(checkpoint),
            "steps": step,
            "trained_modules": trained,
            "trained_parameters": sorted(params),
            "validation": [
                {k: v[k] for k in ("step", "tag", "mean_block_error", "single_deviation", "pair_deviation", "blocks")}
                for v in validations
            ],
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tensors = {n: p for n, p in model.state_dict().items() if n in params or FACTOR_KEY_MARK in n}
        write_converted(
            ckpt, tensors, new_meta, output, input_path=checkpoint, prefix=meta.get("model_prefix", ""), replace=True
        )
        _write_report(summary, out_dir)
    if distributed:
        torch.distributed.barrier()
    return summary


def _output_of(cfg: Mapping[str, Any]) -> Path | None:
    """The output checkpoint path of a run's config (None if it records none)."""
    try:
        return Path(cfg["output_dir"]) / cfg["output_name"]
    except (KeyError, TypeError):
        return None


def read_training_state(path: str | os.PathLike) -> Mapping[str, Any]:
    """A training checkpoint (``checkpoints/step_N.pt``) for ``resume=``; FileNotFoundError /
    CheckpointError (truncated, corrupt, not a fine-tuning checkpoint) before any model work."""
    from .checkpoint import _load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume={path}: no such file")
    try:
        state = _load(path, allow_pickle=True)
    except CheckpointError as e:
        raise CheckpointError(f"resume={e}") from None
    if not isinstance(state, Mapping) or state.get("kind") != "pairformer_fb.finetune":
        raise CheckpointError(
            f"resume={path}: not a fine-tuning checkpoint (written by scripts/finetune.py "
            "under output_dir/checkpoints/)"
        )
    return state


# steps of a run that compile its kernels and capture its CUDA graphs (one per new crop length)
WARMUP_STEPS = 10


def _rate_after_warmup(rows: list[dict]) -> float | None:
    """Steps per second of one run's rows after its first WARMUP_STEPS: the steady rate, without
    the kernel compiles and graph captures of a cold cache (on an H100 they were 31.5 s of the
    first 10 steps against 12.2 s for steps 11-20, benchmarks/session17/finetune_h100/)."""
    if len(rows) <= WARMUP_STEPS:
        return None
    seconds = rows[-1]["seconds"] - rows[WARMUP_STEPS - 1]["seconds"]
    return (len(rows) - WARMUP_STEPS) / seconds if seconds > 0 else None


def _write_report(summary: dict, out_dir: Path) -> None:
    report = {k: v for k, v in summary.items() if k != "history"}
    atomic_write(out_dir / "finetune_report.json", json.dumps(report, indent=2))
    lines = [
        "# Factor fine-tuning",
        "",
        f"- output: `{summary['output']}`",
        (
            f"- steps: {summary['steps']} ({summary['steps_run']} in this run, "
            f"{summary['steps_per_second'] or 0:.3f} steps/s, {summary['world_size']} process(es))"
        ),
    ]
    if summary["steps_per_second_after_warmup"] is not None:
        lines.append(
            f"- after the first {WARMUP_STEPS} steps (kernel compiles, CUDA graph captures): "
            f"{summary['steps_per_second_after_warmup']:.3f} steps/s"
        )
    if summary["cuda_graphs"] is not None:
        g = summary["cuda_graphs"]
        lines.append(
            f"- CUDA graphs of the recycling cycles without gradients: {g['captures']} capture(s), "
            f"{g['replays']} replay(s), {g['eager']} eager learning call(s), {g['failed']} failed capture(s), "
            f"{g['passthrough']} call(s) passed through (no CUDA, gradients or distill mode)"
        )
    if summary["history"]:
        h = summary["history"]
        lines.append(f"- loss: first step {h[0]['loss']:.4f}, last step {h[-1]['loss']:.4f} (train_log.csv)")
    vals = summary["validations"]
    if vals:
        first, last = vals[0], vals[-1]
        lines += [
            "",
            (
                f"Validation on {', '.join(first['samples'])}: per-block bias-approximation error "
                f"(relative squared error of phi_q phi_k^T) at step {first['step']} and step {last['step']}; "
                "trunk deviation = relative squared error of the lowrank trunk's s / z against the exact one."
            ),
            "",
            f"| module | step {first['step']} | step {last['step']} |",
            "|---|---:|---:|",
        ]
        lines += [f"| `{b}` | {first['blocks'][b]:.4f} | {last['blocks'][b]:.4f} |" for b in first["blocks"]]
        lines += [
            f"| trunk single s | {first['single_deviation']:.4g} | {last['single_deviation']:.4g} |",
            f"| trunk pair z | {first['pair_deviation']:.4g} | {last['pair_deviation']:.4g} |",
        ]
    atomic_write(out_dir / "finetune_report.md", "\n".join(lines) + "\n")


__all__ = [
    "DistillLoss",
    "finetune",
    "graph_recycling",
    "relative_deviation",
    "validate",
    "warmup_cosine",
]
