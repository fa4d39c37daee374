"""Session-4 diagnosis on the device: where the time of one Protenix Pairformer trunk pass goes
inside a real prediction (7WUX A2B2, 1,170 tokens, base architecture, random weights, the
benchmark's features, cuEquivariance + fused layer norm as the stock default), original vs
patched exact; and where one diffusion-attention call goes (1,170 tokens, 5 samples, bf16 and
fp32). Prints tables (and writes them under OUT). Run from the repo root with the host packages
on PYTHONPATH:  python benchmarks/scripts/session4/diag_trunk.py OUT [trunk|diffusion|all]"""
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

out = Path(sys.argv[1] if len(sys.argv) > 1 else "diag_out")
out.mkdir(parents=True, exist_ok=True)
part = sys.argv[2] if len(sys.argv) > 2 else "all"
dev = torch.device("cuda")
LOG = open(out / "diag.txt", "a")


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.write(s + "\n")
    LOG.flush()


def kernel_table(prof, n=30):
    rows = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            r = rows[e.name[:90]]
            r[0] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            r[1] += 1
    total = sum(r[0] for r in rows.values())
    lines = [f"  total GPU kernel time {total / 1e3:.2f} ms"]
    for name, (us, cnt) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:n]:
        lines.append(f"  {us / 1e3:9.3f} ms {100 * us / max(total, 1):5.1f}% x{cnt:<6d} {name}")
    return "\n".join(lines)


class ModuleTimer:
    """CUDA events around every child of every block of a stack (summed per child name), and
    the gaps inside the block (the block's own code: transposes, adds)."""

    def __init__(self, blocks):
        self.events = defaultdict(list)
        self.handles = []
        for blk in blocks:
            self._wrap(blk, "BLOCK")
            for name, child in blk.named_children():
                self._wrap(child, name)

    def _wrap(self, mod, name):
        def pre(m, *a, **k):
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.events[name].append([e, None])

        def post(m, *a, **k):
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.events[name][-1][1] = e

        self.handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        self.handles.append(mod.register_forward_hook(post, with_kwargs=True))

    def table(self):
        torch.cuda.synchronize()
        res = {k: sum(a.elapsed_time(b) for a, b in v if b is not None) for k, v in self.events.items()}
        calls = {k: len(v) for k, v in self.events.items()}
        block = res.pop("BLOCK", 0.0)
        nb = calls.pop("BLOCK", 1)
        lines = [f"  blocks: {nb} calls, {block:.1f} ms total, {block / max(nb, 1):.3f} ms per block"]
        for k, v in sorted(res.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k:24s} {v / max(nb, 1):8.3f} ms/block  ({calls[k]} calls)")
        lines.append(f"  {'(block own code)':24s} {(block - sum(res.values())) / max(nb, 1):8.3f} ms/block")
        return "\n".join(lines)

    def remove(self):
        for h in self.handles:
            h.remove()


def trunk():
    from hydra import compose, initialize_config_dir

    import pairformer_fb as fb
    from pairformer_fb.data.featurize import read_samples
    from pairformer_fb.hosts.structure_hosts import get_host

    with initialize_config_dir(config_dir=str(Path("configs").resolve()), version_base=None):
        cfg = compose(config_name="benchmark", overrides=[
            "model=base", "samples=[7wux_a2b2]", "+overrides={model.N_cycle:1,sample_diffusion.N_step:2}"])
    host = get_host("protenix")
    sample = read_samples(["7wux_a2b2"])[0]
    feats, _ = host.featurise(sample, cfg)
    model, info = host.build(cfg, dev, None)
    log("model", info)
    feats = {k: v.to(dev) for k, v in feats.items()}
    blocks = list(model.pairformer_stack.blocks)

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            host.predict(model, feats)

    orig = model.get_pairformer_output
    state = {"spans": [], "prof": None}

    def wrapped(*a, **k):  # the trunk pass of the prediction: timed, or profiled
        torch.cuda.synchronize()
        s = time.perf_counter()
        if state["prof"] is not None:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                r = orig(*a, **k)
                torch.cuda.synchronize()
            state["prof"] = prof
            state["chunk_size"] = k.get("chunk_size")
        else:
            r = orig(*a, **k)
        torch.cuda.synchronize()
        state["spans"].append(time.perf_counter() - s)
        return r

    model.get_pairformer_output = wrapped
    for variant in ("original", "exact"):
        if variant == "exact":
            fb.patch_model(model, mode="exact", stacks=["pairformer", "msa", "template", "confidence"],
                           kinds=("triangle", "single"))
        forward()
        state["spans"].clear()
        forward()
        forward()
        log(f"== trunk {variant}: get_pairformer_output (1 cycle) {[round(x * 1e3, 1) for x in state['spans']]} ms")
        timer = ModuleTimer(blocks)
        forward()
        log(f"== per-module CUDA-event time inside the prediction, {variant}, pairformer_stack:")
        log(timer.table())
        timer.remove()
        state["prof"] = True
        forward()
        log(f"== kernels of get_pairformer_output (1 cycle), {variant}, chunk_size={state.get('chunk_size')}:")
        log(kernel_table(state["prof"], 40))
        state["prof"] = None
    fb.unpatch_model(model)


def gpu_ms_per_call(call, dtype, calls=10):
    """GPU kernel time of one call (summed kernel durations / calls, profiler): what a
    CUDA-graphed step costs on the GPU, without the eager host overhead."""
    from pairformer_fb.bench import diffusion as bd

    with torch.no_grad(), bd._autocast(dtype, dev):
        for _ in range(3):
            call()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                call()
            torch.cuda.synchronize()
    total = sum(e.device_time_total for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return total / 1e3 / calls, prof


def diffusion():
    """The diffusion transformer's attention, one block and one step (5 samples): GPU time per
    call of the host module (Protenix's efficient-fusion bias, its inference default) and ours
    (exact, cached bias), in bf16 autocast, fp32 (TF32 matmuls: Protenix's diffusion precision),
    and fp32 calls with our compute dtype bf16 (patch_model(diffusion_dtype="bf16"))."""
    from omegaconf import OmegaConf

    from pairformer_fb.bench import diffusion as bd

    cfg = OmegaConf.load("configs/bench_diffusion.yaml")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows = []
    for n in (384, 1170):
        host = bd._host_module("diffusion", cfg, dev)
        x = bd._inputs("diffusion", n, cfg, dev)
        ours = bd._ours(host, "diffusion", "exact", cfg)
        stock = bd._call(host, "diffusion", x, cfg, True)
        mine = bd._call(ours, "diffusion", x, cfg, True)
        for label, dtype, compute in (("bf16", torch.bfloat16, None), ("fp32", torch.float32, None),
                                      ("fp32 call, ours in bf16", torch.float32, torch.bfloat16)):
            ours.flash_bias.compute_dtype = compute
            ms_stock, _ = gpu_ms_per_call(stock, dtype)
            ms_ours, prof = gpu_ms_per_call(mine, dtype)
            with torch.no_grad(), bd._autocast(dtype, dev):
                ref, out = stock(), mine()
            err = float((out.double() - ref.double()).norm() / ref.double().norm())
            rows.append(f"| {n} | {label} | {ms_stock:.3f} | {ms_ours:.3f} | {ms_stock / ms_ours:.2f} | {err:.2e} |")
            log(f"== diffusion attention exact N={n} 5 samples, {label}: kernels of 10 calls")
            log(kernel_table(prof, 14))
        del host, ours, x
        torch.cuda.empty_cache()
    log("== GPU time per block per step (ms, kernel sum / call; 5 samples; H = 16, D = 48)")
    log("| tokens | precision | stock (efficient fusion) | ours exact | speed-up | rel. err vs stock |")
    log("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        log(r)


if part in ("all", "trunk"):
    trunk()
if part in ("all", "diffusion"):
    diffusion()
