"""Fine-tuning of the factor networks (pairformer_fb.convert.finetune, scripts/finetune.py) on a tiny
converted Protenix checkpoint made here with ``convert_checkpoint``.

The objective is checked against its pieces (the logged and validated errors against
``capture_bias_targets`` + ``approximation_error`` recomputed on the same crops), the optimisation
against the loss falling on a fixed batch, resume against an uninterrupted run (identical loss
sequence and factors), and the 2-process gloo DDP step against one process that averages the two
ranks' gradients and takes the same AdamW step.
"""

import contextlib
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("LAYERNORM_TYPE", "torch")

from test_convert import CONFIG, need, protenix_model, save_protenix

from pairformer_fb.convert.checkpoint import FACTOR_KEY_MARK
from pairformer_fb.convert.convert import convert_checkpoint, load_converted
from pairformer_fb.convert.factor_init import approximation_error, capture_bias_targets
from pairformer_fb.convert.finetune import DistillLoss, finetune, warmup_cosine
from pairformer_fb.convert.training_data import ProteinCrops, split_samples
from pairformer_fb.hosts.protenix.training import crop_features, protenix_trunk
from pairformer_fb.patching.patching import patched_modules

pytestmark = [
    pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning"),
    pytest.mark.filterwarnings("ignore:In CPU autocast, but the target dtype is not supported:UserWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "finetune"


@pytest.fixture(scope="module")
def tiny_fb(tmp_path_factory):
    """A tiny Protenix checkpoint converted to lowrank (rank 8, least-squares fit on 1crn only)."""
    need("protenix")
    d = tmp_path_factory.mktemp("ft")
    save_protenix(protenix_model(), d / "tiny.pt")
    convert_checkpoint(
        d / "tiny.pt",
        d / "tiny_fb.pt",
        model="tiny",
        mode="lowrank",
        factor_config=CONFIG,
        samples=[ROOT / "data_samples" / "1crn.fasta"],
        max_tokens=12,
        fit_steps=0,
        progress=False,
        write_report=False,
    )
    return d / "tiny_fb.pt"


def make_cfg(overrides):
    """The script's config (configs/finetune) with Hydra overrides, as the plain dict finetune takes."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="finetune", overrides=list(overrides))
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("hydra", None)
    return c


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def factors_of(path):
    sd = torch.load(path, weights_only=True)["model"]
    return {k: v for k, v in sd.items() if FACTOR_KEY_MARK in k}


def short_fasta(tmp_path, name="short", seq="MKTAYIAKQRQISFVK"):
    f = tmp_path / f"{name}.fasta"
    f.write_text(f">{name}\n{seq}\n")
    return f


# ---------------------------------------------------------------------------------------------


def test_crop_features_keeps_tokens_and_their_atoms():
    need("protenix")
    from pairformer_fb.data.featurize import read_samples
    from pairformer_fb.hosts.protenix.featurize import protenix_features

    sample = read_samples(["7wux_a2b2"])[0]
    feats, atoms = protenix_features(sample, seed=0)
    start, size = 250, 40  # across a chain boundary of the 4-chain sample
    crop = crop_features(feats, start, size)
    tok = feats["atom_to_token_idx"]
    keep = (tok >= start) & (tok < start + size)
    assert crop["restype"].shape[0] == size and crop["msa"].shape[1] == size
    assert torch.equal(crop["residue_index"], feats["residue_index"][start : start + size])
    assert torch.equal(crop["asym_id"], feats["asym_id"][start : start + size])
    assert torch.equal(crop["ref_pos"], feats["ref_pos"][keep])
    assert torch.equal(crop["token_index"], torch.arange(size))
    # every atom of a cropped token points at that token's new index
    assert torch.equal(crop["atom_to_token_idx"], tok[keep] - start)
    assert crop["atom_to_token_idx"].min() == 0 and crop["atom_to_token_idx"].max() == size - 1
    names = [str(n) for n in atoms.atom_name[keep.numpy()]]
    assert names.count("CA") == size
    with pytest.raises(ValueError, match="unknown feature key"):
        crop_features({**feats, "new_feature": torch.zeros(3)}, 0, 5)
    with pytest.raises(ValueError, match="outside"):
        crop_features(feats, feats["restype"].shape[0], 5)


def test_a_validation_sample_must_share_no_chain_with_training(tmp_path):
    """7wux_a2b2 is two copies of 7wux_a's and 7wux_b's chains: held out beside them it would be
    measured on what trained. The default split holds out the last sample, 1ubq, which no other
    sample contains."""
    need("protenix")
    with pytest.raises(ValueError, match=re.escape("validation sample '7wux_a2b2' is not held out: its chain")):
        split_samples(["1crn", "7wux_a", "7wux_a2b2"], None, 1)
    with pytest.raises(ValueError, match="training sample 'other'"):
        copy = str(short_fasta(tmp_path, "copy"))
        split_samples([str(short_fasta(tmp_path, "other")), copy], [copy], 1)
    data = make_cfg([])["data"]
    train, held = split_samples(data["samples"], data["val_samples"], data["n_val"])
    assert [s.name for s in held] == ["1ubq"] and "1ubq" not in [s.name for s in train]


def test_data_order_is_a_function_of_seed_step_and_rank():
    need("protenix")
    train, held = split_samples(["1crn", "1ubq", "7wux_a"], None, 1)
    assert [s.name for s in train] == ["1crn", "1ubq"] and [s.name for s in held] == ["7wux_a"]
    a, b = ProteinCrops(train, crop_size=8, seed=3), ProteinCrops(train, crop_size=8, seed=3)
    picks = [a.pick(t, r, 2)[:2] for t in range(4) for r in range(2)]
    assert picks == [b.pick(t, r, 2)[:2] for t in range(4) for r in range(2)]
    # each epoch visits every sample once; ranks see different samples in a step
    assert sorted(n for n, _ in picks[:2]) == ["1crn", "1ubq"]
    assert len(set(picks)) > 2
    assert warmup_cosine(0, 4, 10, 0.1) == 0.25 and warmup_cosine(4, 4, 10, 0.1) == 1.0
    assert abs(warmup_cosine(10, 4, 10, 0.1) - 0.1) < 1e-12


def test_script_tiny_three_steps_writes_loadable_checkpoint(tiny_fb, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "out"
    args = [
        sys.executable,
        str(ROOT / "scripts" / "finetune.py"),
        f"checkpoint={tiny_fb}",
        f"output_dir={out}",
        "model=tiny",
        "trainer.max_steps=3",
        "trainer.save_every=2",
        "data.crop_size=12",
        "data.samples=[1crn,1ubq,7wux_a]",
        "schedule.warmup_steps=1",
        "progress=false",
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = out / "finetuned_fb.pt"
    assert "wrote" in done.stdout and result.exists()
    rows = read_csv(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(float(r["loss"]) > 0 for r in rows)
    assert (out / "checkpoints" / "step_0000002.pt").exists() and (out / "validation.csv").exists()
    report = (out / "finetune_report.md").read_text()
    assert "| `pairformer_stack.blocks.0.tri_att_start` |" in report
    assert "after the first" not in report  # no rate after the warm-up in a run of 3 steps

    container = torch.load(result, weights_only=True)
    source = torch.load(tiny_fb, weights_only=True)
    meta = container["pairformer_fb"]
    assert meta["finetune"]["config"]["trainer"]["max_steps"] == 3 and meta["finetune"]["steps"] == 3
    assert meta["finetune"]["config"]["model"]["preset"] == "tiny"
    assert meta["modules"] == source["pairformer_fb"]["modules"]
    # the conversion's fit errors describe the factors before fine-tuning: kept under that name
    assert "fit" not in meta and meta["conversion_fit"] == source["pairformer_fb"]["fit"]
    # the structure benchmark's lowrank variant says the factors were fine-tuned
    bench = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), f"checkpoint={result}", "samples=[1crn]",
         "variants=[lowrank]", "warmup=0", f"output_dir={tmp_path / 'bench'}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-3000:]
    low = json.loads((tmp_path / "bench" / "results.json").read_text())["records"][0]
    assert low["notes"]["factors"] == "from the converted checkpoint, fine-tuned 3 steps"
    # the host weights unchanged, every factor tensor trained
    assert container["model"].keys() == source["model"].keys()
    for k, v in source["model"].items():
        if FACTOR_KEY_MARK in k:
            assert not torch.equal(container["model"][k], v) or k.endswith(".bias"), k
        else:
            assert torch.equal(container["model"][k], v), k
    model = protenix_model(seed=4)
    load_converted(result, model)
    got = {k: v for k, v in model.state_dict().items() if FACTOR_KEY_MARK in k}
    assert all(torch.equal(got[k], container["model"]["module." + k]) for k in got)

    # the validation errors are what capture_bias_targets + approximation_error give on the same crop
    val_rows = read_csv(out / "validation.csv")
    after = {r["block"]: float(r["error"]) for r in val_rows if r["tag"] == "after"}
    crops = ProteinCrops(split_samples(["7wux_a"], None, 0)[0], crop_size=12, seed=0)
    feats = crops.fixed(0)
    records = capture_bias_targets(model, lambda m: protenix_trunk(m, feats, m.N_cycle, grad=False))
    wrappers = patched_modules(model)
    for path, err in after.items():
        with torch.no_grad():
            ref = float(approximation_error(wrappers[path].flash_bias.factor_network, records[path]))
        assert abs(ref - err) <= 1e-5 * max(1.0, ref), (path, ref, err)

    bad = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    # the output (and the run's logs and report) are never overwritten silently
    assert bad.returncode != 0 and "already holds a train_log.csv" in bad.stderr


def test_loss_falls_on_a_fixed_batch(tiny_fb, tmp_path):
    fasta = short_fasta(tmp_path)
    cfg = make_cfg(
        [
            f"checkpoint={tiny_fb}",
            f"output_dir={tmp_path / 'o'}",
            f"data.samples=[{fasta}]",
            "data.n_val=0",
            "data.crop_size=16",
            "trainer.max_steps=30",
            "trainer.save_every=0",
            "schedule=constant",
            "optimizer.lr=3e-3",
            "progress=false",
        ]
    )
    summary = finetune(cfg)
    losses = [r["loss"] for r in summary["history"]]
    assert all(r["crop_start"] == 0 and r["n_tokens"] == 16 for r in summary["history"])  # the same batch
    # the steady rate: steps 11-30 over their own seconds, and the report says it
    h = summary["history"]
    steady = 20 / (h[29]["seconds"] - h[9]["seconds"])
    assert summary["steps_per_second_after_warmup"] == pytest.approx(steady, rel=1e-12)
    assert (
        f"after the first 10 steps (kernel compiles, CUDA graph captures): {steady:.3f} steps/s"
        in (tmp_path / "o" / "finetune_report.md").read_text()
    )

    # step 1's loss is the mean per-block error of the converted factors on that batch
    model = protenix_model(seed=9)
    load_converted(tiny_fb, model)
    feats = ProteinCrops(split_samples([str(fasta)], None, 0)[0], crop_size=16, seed=0).fixed(0)
    records = capture_bias_targets(model, lambda m: protenix_trunk(m, feats, 1, grad=False))
    wrappers = patched_modules(model)
    with torch.no_grad():
        ref = sum(
            float(approximation_error(wrappers[p].flash_bias.factor_network, r)) for p, r in records.items()
        ) / len(records)
    assert abs(losses[0] - ref) <= 1e-5 * ref, (losses[0], ref)
    assert losses[-1] < 0.5 * losses[0], losses
    assert min(losses[-5:]) < min(losses[:5])


def test_distillation_defers_the_last_cycles_losses_and_batches_them(tiny_fb, tmp_path):
    """With several recycles the trunk runs exact in the cycles before the last and distills in
    the last, where each module keeps the BiasSample of its loss and the losses are computed
    after the trunk, batched (no factor network runs inside the trunk). The loss and its
    gradients are those of the modules' own losses when distilling in every cycle (whose earlier
    losses the last overwrote), up to the batched products' rounding; so is the validation."""
    from naive import rel_err

    from pairformer_fb.convert.finetune import validate

    model = protenix_model(seed=9)
    load_converted(tiny_fb, model)
    feats = ProteinCrops(split_samples([str(short_fasta(tmp_path))], None, 0)[0], crop_size=16, seed=0).fixed(0)
    objective = DistillLoss(model, list(patched_modules(model)))
    params = [p for n, p in model.named_parameters() if FACTOR_KEY_MARK in n]
    calls = []
    hooks = [
        w.flash_bias.factor_network.register_forward_hook(lambda *_: calls.append(1))
        for w in objective.wrappers.values()
    ]
    n_cycle = 3
    loss, logs = objective(feats, n_cycle)
    grads = torch.autograd.grad(loss, params)
    assert not calls  # the factor networks ran batched, after the trunk
    assert all(w.last_distill_sample is None for w in objective.wrappers.values())  # not kept

    objective.set_mode("distill")  # every cycle, each module computing its own loss
    _, _, _ = protenix_trunk(model, feats, n_cycle, grad=True)
    assert len(calls) == n_cycle * len(objective.wrappers)
    every = torch.stack([objective.wrappers[p].last_distill_loss for p in objective.trained]).mean()
    assert rel_err(loss, every) < 1e-6, (float(loss), float(every))
    for a, b in zip(grads, torch.autograd.grad(every, params), strict=True):
        assert rel_err(a, b) < 1e-5

    calls.clear()
    val = validate(objective, [("short", feats)], n_cycle, contextlib.nullcontext)
    assert len(calls) == n_cycle * len(objective.wrappers)  # the lowrank pass only
    assert val["mean_block_error"] == pytest.approx(float(logs["bias_loss"]), rel=1e-6)
    for h in hooks:
        h.remove()


def recycling_run(tiny_fb, feats, *, graphed, device="cpu", backend=None, steps=3, n_cycle=3):
    """``steps`` AdamW steps of the factor networks (``n_cycle`` recycles) then a validation, with
    or without ``graph_recycling``: (losses, trained weights, validation, graph stats)."""
    from pairformer_fb.convert.finetune import graph_recycling, validate

    model = protenix_model(seed=9)
    load_converted(tiny_fb, model)
    model.to(device)
    feats = {k: v.to(device) for k, v in feats.items()}
    objective = DistillLoss(model, list(patched_modules(model)))
    params = [p for n, p in model.named_parameters() if FACTOR_KEY_MARK in n]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    handle = graph_recycling(model, params, **({"backend": backend} if backend else {})) if graphed else None
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss, _ = objective(feats, n_cycle)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    val = validate(objective, [("short", feats)], n_cycle, contextlib.nullcontext)
    stats = handle.stats if handle is not None else None
    if handle is not None:
        handle.remove()
    return torch.stack(losses), [p.detach().clone() for p in params], val, stats


# exact cycles 0, 1 of step 1 learn and capture, then 2 replays per step; validation: the distill
# pass's two exact cycles replay, its lowrank pass learns, captures and replays once
RECYCLING_GRAPH_STATS = {"eager": 2, "captures": 2, "replays": 9, "invalidated": 0, "failed": 0, "passthrough": 4}


def test_graphed_recycling_trains_as_the_eager_run(tiny_fb, tmp_path):
    """``graph_recycling`` with graph semantics on a CPU (EagerReplayBackend): three optimizer
    steps with 3 recycles, then a validation, give the eager run's losses, weights and validation
    exactly. The cycles without gradients replay one graph across the steps (the trained weights
    do not invalidate it); the last cycle (gradients, "distill") runs eagerly; validation's
    lowrank pass gets a graph of its own."""
    from pairformer_fb.patching.cuda_graphs import EagerReplayBackend

    feats = ProteinCrops(split_samples([str(short_fasta(tmp_path))], None, 0)[0], crop_size=16, seed=0).fixed(0)
    losses, weights, val, _ = recycling_run(tiny_fb, feats, graphed=False)
    g_losses, g_weights, g_val, stats = recycling_run(tiny_fb, feats, graphed=True, backend=EagerReplayBackend())
    assert torch.equal(g_losses, losses) and losses[0] != losses[-1]
    assert all(torch.equal(a, b) for a, b in zip(g_weights, weights, strict=True))
    assert g_val == val
    assert stats == RECYCLING_GRAPH_STATS, stats


def test_finetune_with_cuda_graphs_reports_them_and_trains_the_same(tiny_fb, tmp_path, monkeypatch):
    """``trainer.cuda_graphs=true`` through ``finetune`` (graph semantics on a CPU: the
    EagerReplayBackend in place of the real one, which passes through there): the same losses as
    the eager run, the graph counts in the summary and the report."""
    import pairformer_fb.convert.finetune as ft
    from pairformer_fb.patching.cuda_graphs import EagerReplayBackend

    fasta = short_fasta(tmp_path)
    real = ft.graph_recycling
    monkeypatch.setattr(
        ft, "graph_recycling", lambda model, trained, **kw: real(model, trained, backend=EagerReplayBackend(), **kw)
    )

    def run(graphs):
        cfg = make_cfg(
            [
                f"checkpoint={tiny_fb}",
                f"output_dir={tmp_path / f'o_{graphs}'}",
                f"data.samples=[{fasta}]",
                "data.n_val=0",
                "data.crop_size=16",
                "trainer.max_steps=3",
                "trainer.save_every=0",
                "model.n_cycle=6",  # steps of 5, 6, 1 cycles: 4 + 5 exact cycles
                f"trainer.cuda_graphs={graphs}",
                "progress=false",
            ]
        )
        return finetune(cfg)

    eager, graphed = run(False), run(True)
    assert [r["loss"] for r in graphed["history"]] == [r["loss"] for r in eager["history"]]
    assert eager["cuda_graphs"] is None
    stats = graphed["cuda_graphs"]
    assert [r["n_cycle"] for r in graphed["history"]] == [5, 6, 1]
    # step 1: learn, capture (+ its replay), 2 replays; step 2: 5 replays; the last cycles eager
    assert stats == {"eager": 1, "captures": 1, "replays": 8, "invalidated": 0, "failed": 0, "passthrough": 3}, stats
    report = (tmp_path / "o_True" / "finetune_report.md").read_text()
    assert f"{stats['captures']} capture(s), {stats['replays']} replay(s)" in report


@pytest.mark.gpu
def test_graphed_recycling_on_cuda_trains_as_the_eager_run(tiny_fb, tmp_path, no_tf32):
    """The same with real CUDA graphs on a GPU (fp32; a replay runs the captured kernels: the
    same results up to the GPU's nondeterministic reductions)."""
    from naive import rel_err

    feats = ProteinCrops(split_samples([str(short_fasta(tmp_path))], None, 0)[0], crop_size=16, seed=0).fixed(0)
    losses, weights, val, _ = recycling_run(tiny_fb, feats, graphed=False, device="cuda")
    g_losses, g_weights, g_val, stats = recycling_run(tiny_fb, feats, graphed=True, device="cuda")
    assert stats == RECYCLING_GRAPH_STATS, stats
    assert rel_err(g_losses, losses) < 1e-5
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(g_weights, weights, strict=True))
    assert g_val["mean_block_error"] == pytest.approx(val["mean_block_error"], rel=1e-5)
    assert g_val["pair_deviation"] == pytest.approx(val["pair_deviation"], rel=1e-4, abs=1e-9)


def test_resume_reproduces_the_uninterrupted_run(tiny_fb, tmp_path):
    base = [
        f"checkpoint={tiny_fb}",
        "data.samples=[1crn,1ubq,7wux_a]",
        "data.n_val=1",
        "data.crop_size=12",
        "trainer.save_every=3",
        "schedule.warmup_steps=2",
        "progress=false",
        "loss=bias_and_output",
        "model.n_cycle=2",
    ]
    full = finetune(make_cfg(base + [f"output_dir={tmp_path / 'full'}", "trainer.max_steps=6"]))
    finetune(
        make_cfg(
            base
            + [
                f"output_dir={tmp_path / 'part'}",
                "trainer.max_steps=3",
                "schedule.total_steps=6",
                f"trainer.checkpoint_dir={tmp_path / 'ck'}",
                f"output_name={tmp_path / 'part.pt'}",
            ]
        )
    )
    assert (tmp_path / "part.pt").exists() and not (tmp_path / "part" / "checkpoints" / "step_0000003.pt").exists()
    resumed = finetune(
        make_cfg(
            base
            + [
                f"output_dir={tmp_path / 'resumed'}",
                "trainer.max_steps=6",
                f"resume={tmp_path / 'ck' / 'step_0000003.pt'}",
            ]
        )
    )
    keys = ("step", "loss", "bias_loss", "output_loss", "lr", "grad_norm", "sample", "crop_start")
    assert all(r["output_loss"] > 0 for r in full["history"])
    # recycling as Protenix trains: 1..N_cycle cycles, drawn from RandomState(step)
    assert [r["n_cycle"] for r in full["history"]] == [np.random.RandomState(t).randint(1, 3) for t in range(6)]
    assert [[r[k] for k in keys] for r in resumed["history"]] == [[r[k] for k in keys] for r in full["history"]]
    assert resumed["steps_run"] == 3
    a, b = factors_of(tmp_path / "full" / "finetuned_fb.pt"), factors_of(tmp_path / "resumed" / "finetuned_fb.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full["validations"][-1]["blocks"] == resumed["validations"][-1]["blocks"]


def test_host_activation_checkpointing_gives_the_same_run(tiny_fb, tmp_path):
    """A model built with the host's activation checkpointing (Protenix blocks_per_ckpt, as its
    base preset trains): the same losses and gradients as without (its recompute would otherwise
    rerun the patched modules in the mode they have at backward time: a CheckpointError)."""
    base = [
        f"checkpoint={tiny_fb}",
        "data.samples=[1crn,1ubq]",
        "data.n_val=0",
        "data.crop_size=12",
        "trainer.max_steps=2",
        "trainer.save_every=0",
        "progress=false",
        "loss=bias_and_output",
    ]
    plain = finetune(make_cfg(base + [f"output_dir={tmp_path / 'plain'}"]))
    ckpt = finetune(make_cfg(base + [f"output_dir={tmp_path / 'ckpt'}", "+model.overrides={blocks_per_ckpt: 1}"]))
    keys = ("loss", "bias_loss", "output_loss", "grad_norm")
    for a, b in zip(plain["history"], ckpt["history"], strict=True):
        assert all(abs(a[k] - b[k]) <= 1e-5 * abs(a[k]) for k in keys), (a, b)


def test_two_process_gloo_step_equals_averaged_gradients(tiny_fb, tmp_path):
    """torchrun, 2 CPU processes (gloo): one AdamW step on the mean of the two ranks' gradients."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    overrides = [
        f"checkpoint={tiny_fb}",
        f"output_dir={out}",
        "data.samples=[1crn,1ubq]",
        "data.n_val=0",
        "data.crop_size=12",
        "trainer.max_steps=1",
        "trainer.save_every=0",
        "trainer.grad_clip=0",
        "schedule.warmup_steps=1",
        "optimizer.lr=1e-3",
        "progress=false",
    ]
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "scripts" / "finetune.py"),
        *overrides,
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    got = factors_of(out / "finetuned_fb.pt")

    cfg = make_cfg(overrides)
    model = protenix_model(seed=9)
    load_converted(tiny_fb, model)
    before = {k: v.clone() for k, v in model.state_dict().items() if FACTOR_KEY_MARK in k}
    objective = DistillLoss(model, list(patched_modules(model)))
    params = [p for n, p in model.named_parameters() if FACTOR_KEY_MARK in n]
    crops = ProteinCrops(split_samples(cfg["data"]["samples"], None, 0)[0], crop_size=12, seed=0)
    picked, losses = [], []
    for rank in range(2):
        name, _, feats = crops.pick(0, rank, 2)
        picked.append(name)
        loss, _ = objective(feats, 1)
        (loss / 2).backward()
        losses.append(float(loss.detach()))
    assert sorted(picked) == ["1crn", "1ubq"]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    opt.step()
    rows = read_csv(out / "train_log.csv")
    assert len(rows) == 1 and abs(float(rows[0]["loss"]) - sum(losses) / 2) <= 1e-5
    want = {"module." + k: v for k, v in model.state_dict().items() if FACTOR_KEY_MARK in k}
    assert want.keys() == got.keys()
    moved = 0
    for k, w in want.items():
        assert torch.allclose(got[k], w, rtol=0, atol=2e-6), k
        moved += not torch.equal(w, before[k[len("module.") :]])
    assert moved > 0


def test_bad_inputs_are_named(tiny_fb, tmp_path):
    base = [
        f"checkpoint={tiny_fb}",
        "data.samples=[1crn,1ubq]",
        "data.crop_size=8",
        "trainer.max_steps=1",
        "progress=false",
    ]
    with pytest.raises(ValueError, match="patch.blocks"):
        finetune(make_cfg(base + [f"output_dir={tmp_path / 'a'}", "patch.blocks=[7]"]))
    with pytest.raises(ValueError, match="patch.rank=5"):
        finetune(make_cfg(base + [f"output_dir={tmp_path / 'b'}", "patch.rank=5"]))
    with pytest.raises(ValueError, match="data.n_val"):
        finetune(make_cfg(base + [f"output_dir={tmp_path / 'c'}", "data.n_val=2"]))
    for key, value, expected in [
        ("cuda_graphs_max", "0", "trainer.cuda_graphs_max must be an integer >= 1, got 0"),
        ("cuda_graphs_max", "many", "trainer.cuda_graphs_max must be an integer >= 1, got 'many'"),
        ("cuda_graphs", "maybe", "trainer.cuda_graphs must be true or false, got 'maybe'"),
        ("max_steps", "abc", "trainer.max_steps must be an integer >= 1, got 'abc'"),
        ("bf16", "2", "trainer.bf16 must be true or false, got 2"),
        ("../optimizer.lr", "-1e-3", "optimizer.lr must be a number >= 0, got -0.001"),
        ("../device", "gpu", "device must be one of auto, cuda, cpu, got 'gpu'"),
    ]:
        override = key[3:] if key.startswith("../") else f"trainer.{key}"
        with pytest.raises(ValueError, match=re.escape(expected)):
            finetune(make_cfg(base + [f"output_dir={tmp_path / 'f'}", f"{override}={value}"]))
        assert not (tmp_path / "f").exists()
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="trainer.tensorboard=true needs"):
            finetune(make_cfg(base + [f"output_dir={tmp_path / 'e'}", "trainer.tensorboard=true"]))
    plain = tmp_path / "plain.pt"
    save_protenix(protenix_model(), plain)
    from pairformer_fb.convert.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="not a converted checkpoint"):
        finetune(make_cfg(base[1:] + [f"checkpoint={plain}", f"output_dir={tmp_path / 'd'}"]))


def test_unfreeze_trains_host_weights_too(tiny_fb, tmp_path):
    cfg = make_cfg(
        [
            f"checkpoint={tiny_fb}",
            f"output_dir={tmp_path / 'u'}",
            "data.samples=[1crn,1ubq]",
            "data.crop_size=8",
            "trainer.max_steps=2",
            "trainer.save_every=0",
            "progress=false",
            "loss=bias_and_output",
            "train.unfreeze=['^pairformer_stack.blocks.1.tri_att_start.mha.linear_o']",
            "patch.blocks=[0]",
        ]
    )
    finetune(cfg)
    new = torch.load(tmp_path / "u" / "finetuned_fb.pt", weights_only=True)["model"]
    old = torch.load(tiny_fb, weights_only=True)["model"]
    changed = sorted(k for k in old if not torch.equal(old[k], new[k]))
    # the factors of block 0 (patch.blocks) and the unfrozen host weight, trained by the output term
    assert all(
        ".blocks.0." in k
        and FACTOR_KEY_MARK in k
        or k == "module.pairformer_stack.blocks.1.tri_att_start.mha.linear_o.weight"
        for k in changed
    ), changed
    assert "module.pairformer_stack.blocks.1.tri_att_start.mha.linear_o.weight" in changed
    assert not any(".blocks.1." in k and FACTOR_KEY_MARK in k for k in changed)
