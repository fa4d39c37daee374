"""Session-3 diagnosis on the device (H200): why the triangle op is slow inside the module at
N = 1170, a backward sweep for the dense-bias fwd+bwd (issue 2) including the fused dS atomics,
and where the diffusion attention's time goes (GPU vs host). Prints tables; run from the repo
root with the host packages on PYTHONPATH."""
import math, os, sys, time, json, contextlib
import torch, triton, triton.testing
import torch.nn.functional as F
from pairformer_fb import flash_bias_attention
from pairformer_fb.kernel import tiles as tfb

dev = torch.device("cuda")
bf = torch.bfloat16
part = sys.argv[1] if len(sys.argv) > 1 else "all"
def bench(fn, rep=100):
    return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")
def log(*a):
    print(*a, flush=True)

H, D = 4, 32
def tri_inputs(N, layout, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    if layout == "contig":
        q, k, v, gate = (torch.randn(N, H, N, D, device=dev, dtype=bf, generator=g) for _ in range(4))
    else:
        proj = torch.randn(N, N, 4, H, D, device=dev, dtype=bf, generator=g)
        q, k, v, gate = (t.transpose(1, 2) for t in proj.unbind(2))
    bias = torch.randn(1, H, N, N, device=dev, dtype=bf, generator=g)
    mask = torch.ones(N, N, dtype=torch.bool, device=dev)
    mask[:, -max(1, N // 20):] = False
    return q, k, v, gate, bias, mask

if part in ("all", "tri"):
    log("== A. triangle op forward (inference), H=4 D=32 bf16, ms")
    for N in (1024, 1152, 1170):
        for layout in ("contig", "strided"):
            q, k, v, gate, bias, mask = tri_inputs(N, layout)
            for use_mask, use_gate in ((False, False), (True, False), (True, True)):
                with torch.no_grad():
                    fn = lambda: flash_bias_attention(q, k, v, bias=bias, key_mask=mask if use_mask else None,
                                                      gate=gate if use_gate else None)
                    ms = bench(fn)
                log(f"N={N} {layout:8s} mask={int(use_mask)} gate={int(use_gate)}: {ms:.3f}")
            del q, k, v, gate
        torch.cuda.empty_cache()
    log("== A2. forward tile sweep (bm, bn, warps, stages, rows): module case (strided+mask+gate) and op case")
    for N in (1024, 1170):
        for case in ("module", "op"):
            q, k, v, gate, bias, mask = tri_inputs(N, "strided" if case == "module" else "contig")
            kw = dict(bias=bias, key_mask=mask, gate=gate) if case == "module" else dict(bias=bias)
            key = tfb.config_key("fwd", 32, 0, True)
            for cand in [(64, 64, 4, 3, 2), (64, 64, 4, 3, 1), (128, 64, 4, 3, 1), (128, 64, 8, 3, 1), (64, 32, 4, 3, 2),
                         (128, 32, 4, 3, 1), (128, 128, 8, 3, 1), (64, 64, 4, 4, 1), (128, 64, 4, 4, 1), (64, 128, 4, 3, 1)]:
                tfb.CONFIG_OVERRIDES[key] = tfb.KernelConfig(*cand)
                try:
                    with torch.no_grad():
                        ms = bench(lambda: flash_bias_attention(q, k, v, **kw))
                    log(f"  N={N} {case} {cand}: {ms:.3f}")
                except Exception as e:
                    log(f"  N={N} {case} {cand}: {type(e).__name__} {str(e)[:100]}")
            tfb.CONFIG_OVERRIDES.pop(key, None)
            del q, k, v, gate; torch.cuda.empty_cache()
    log("== A3. lowrank R=32 module case (strided+mask+gate, shared factors) forward sweep at 1170")
    q, k, v, gate, bias, mask = tri_inputs(1170, "strided")
    g = torch.Generator(device="cuda").manual_seed(3)
    qf = 0.2 * torch.randn(1, H, 1170, 32, device=dev, dtype=bf, generator=g)
    kf = 0.2 * torch.randn(1, H, 1170, 32, device=dev, dtype=bf, generator=g)
    key = tfb.config_key("fwd", 32, 32, False)
    for cand in [(128, 64, 4, 3, 1), (64, 64, 4, 3, 1), (64, 64, 4, 3, 2), (128, 64, 8, 3, 1), (128, 32, 4, 3, 1)]:
        tfb.CONFIG_OVERRIDES[key] = tfb.KernelConfig(*cand)
        with torch.no_grad():
            ms = bench(lambda: flash_bias_attention(q, k, v, q_factors=qf, k_factors=kf, key_mask=mask, gate=gate))
        log(f"  R32 N=1170 module {cand}: {ms:.3f}")
    tfb.CONFIG_OVERRIDES.pop(key, None)
    del q, k, v, gate; torch.cuda.empty_cache()

if part in ("all", "bwd"):
    log("== B. dense bias / R=32 fwd+bwd at N=1024 (B=1024, H=4, D=32), ms")
    N = 1024
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(N, H, N, D, device=dev, dtype=bf, generator=g).requires_grad_() for _ in range(3))
    do = torch.randn(N, H, N, D, device=dev, dtype=bf, generator=g)
    bias = torch.randn(1, H, N, N, device=dev, dtype=bf, generator=g).requires_grad_()
    qf = (0.2 * torch.randn(1, H, N, 32, device=dev, dtype=bf, generator=g)).requires_grad_()
    kf = (0.2 * torch.randn(1, H, N, 32, device=dev, dtype=bf, generator=g)).requires_grad_()
    def floor():
        o = F.scaled_dot_product_attention(q, k, v); o.backward(do)
    def floor_f():
        with torch.no_grad(): F.scaled_dot_product_attention(q, k, v)
    log(f"floor SDPA fwd {bench(floor_f):.3f} fwd+bwd {bench(floor):.3f}")
    def run(kw):
        ins = [q, k, v] + list(kw.values())
        def f():
            o = flash_bias_attention(q, k, v, **kw)
            torch.autograd.grad(o, ins, do)
        return f
    ref = {}
    for name, kw, r in (("bias", dict(bias=bias), 0), ("R32", dict(q_factors=qf, k_factors=kf), 32)):
        ins = [q, k, v] + list(kw.values())
        o = flash_bias_attention(q, k, v, **kw, backend="triton")
        ref_g = torch.autograd.grad(o, ins, do)
        bkey = tfb.config_key("bwd", 32, r, r == 0); skey = tfb.config_key("ds_sum", 32, r, r == 0)
        cands = [("default", None, None)]
        cands += [(f"fuse{c}", tfb.KernelConfig(*c, fuse_ds=True), None) for c in
                  [(64, 64, 4, 3, 2), (64, 128, 8, 3, 2), (128, 64, 8, 3, 2), (64, 128, 4, 3, 1), (64, 64, 4, 3, 1),
                   (32, 128, 4, 3, 2), (64, 128, 4, 2, 2), (64, 64, 8, 3, 2), (128, 128, 8, 2, 2), (64, 128, 8, 2, 2)]]
        cands += [(f"ds{c}", None, tfb.KernelConfig(*c)) for c in
                  [(64, 64, 4, 3, 1, 8), (128, 64, 4, 3, 1, 8), (64, 64, 4, 4, 1, 4), (64, 64, 8, 3, 1, 4),
                   (128, 128, 8, 3, 1, 8), (64, 128, 4, 3, 1, 8)]]
        cands += [(f"bwd{c}", tfb.KernelConfig(*c), None) for c in
                  [(64, 128, 8, 3, 1), (128, 128, 8, 3, 1), (64, 128, 4, 4, 1), (64, 64, 4, 3, 2), (128, 64, 8, 3, 1)]]
        for label, bcfg, scfg in cands:
            tfb.CONFIG_OVERRIDES.pop(bkey, None); tfb.CONFIG_OVERRIDES.pop(skey, None); tfb._FITTED.clear()
            if bcfg: tfb.CONFIG_OVERRIDES[bkey] = bcfg
            if scfg: tfb.CONFIG_OVERRIDES[skey] = scfg
            try:
                o = flash_bias_attention(q, k, v, **kw)
                gr = torch.autograd.grad(o, ins, do)
                err = max(float((a.float() - b.float()).norm() / b.float().norm()) for a, b in zip(gr, ref_g))
                ms = bench(run(kw))
                log(f"{name} {label}: fwd+bwd {ms:.3f}  max rel err vs default {err:.2e}")
            except Exception as e:
                log(f"{name} {label}: {type(e).__name__} {str(e)[:120]}")
        tfb.CONFIG_OVERRIDES.pop(bkey, None); tfb.CONFIG_OVERRIDES.pop(skey, None)
    log(f"floor SDPA again fwd+bwd {bench(floor):.3f}")
    del q, k, v, do; torch.cuda.empty_cache()

if part in ("all", "diff"):
    log("== C. diffusion attention module: eager vs CUDA-graph replay (GPU time), 5 samples")
    from hydra import compose, initialize_config_dir
    from pairformer_fb.bench import diffusion as bd
    from torch.profiler import profile, ProfilerActivity
    with initialize_config_dir(config_dir=os.path.abspath("configs"), version_base=None):
        cfg = compose("bench_diffusion")
    host = bd._host_module("diffusion", cfg, dev)
    for N in (384, 1170):
        x = bd._inputs("diffusion", N, cfg, dev)
        for prec in ("bf16", "fp32"):
            ctx = (lambda: torch.autocast("cuda", dtype=bf)) if prec == "bf16" else contextlib.nullcontext
            torch.backends.cuda.matmul.allow_tf32 = True
            for variant in ("stock_fusion", "exact"):
                if variant == "exact":
                    ours = bd._ours(host, "diffusion", "exact", cfg)
                    call = bd._call(ours, "diffusion", x, cfg, True)
                else:
                    call = bd._call(host, "diffusion", x, cfg, True)
                with torch.no_grad(), ctx():
                    for _ in range(3): call()
                    torch.cuda.synchronize()
                    eager = bench(call)
                    t0 = time.perf_counter()
                    for _ in range(50): call()
                    cpu = (time.perf_counter() - t0) / 50 * 1e3
                    torch.cuda.synchronize()
                    try:
                        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(s):
                            for _ in range(2): call()
                        torch.cuda.current_stream().wait_stream(s)
                        gr = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(gr):
                            call()
                        graph = bench(gr.replay)
                    except Exception as e:
                        graph = float("nan"); log(f"   graph failed: {type(e).__name__} {str(e)[:100]}")
                log(f"N={N} {prec} {variant}: eager {eager:.3f} ms, graph {graph:.3f} ms, host enqueue {cpu:.3f} ms/call")
                if N == 1170 and variant == "exact":
                    with torch.no_grad(), ctx():
                        with profile(activities=[ProfilerActivity.CUDA]) as prof:
                            for _ in range(10): call()
                            torch.cuda.synchronize()
                    log(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
        # the op alone with the module's shapes
        for prec, dt in (("bf16", bf), ("fp32", torch.float32)):
            g = torch.Generator(device="cuda").manual_seed(2)
            q, k, v = (torch.randn(5, 16, N, 48, device=dev, dtype=dt, generator=g) for _ in range(3))
            b = torch.randn(1, 16, N, N, device=dev, dtype=dt, generator=g)
            with torch.no_grad():
                log(f"N={N} op alone {prec}: {bench(lambda: flash_bias_attention(q, k, v, bias=b)):.3f} ms; "
                    f"SDPA no bias {bench(lambda: F.scaled_dot_product_attention(q, k, v)):.3f}")

if part in ("all", "mod"):
    log("== D. triangle module at 1170 (starting, exact, bf16 autocast inference), profile")
    from pairformer_fb.modules import FlashBiasTriangleAttention
    from torch.profiler import profile, ProfilerActivity
    N = 1170
    m = FlashBiasTriangleAttention(128, 4, 32, node="starting").to(dev)
    z = torch.randn(1, N, N, 128, device=dev)
    mask = torch.ones(1, N, N, device=dev); mask[..., -N // 20:] = 0
    for use_mask in (True, False):
        with torch.no_grad(), torch.autocast("cuda", dtype=bf):
            fn = lambda: m(z, mask if use_mask else None)
            ms = bench(fn)
            log(f"module mask={use_mask}: {ms:.3f} ms")
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn(); torch.cuda.synchronize()
        log(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=60))

if part in ("all", "dsweep"):
    log("== E. diffusion-transformer op (B=5 samples, H=16, D=48, bias [1,16,N,N] prepared, gate), forward sweep")
    from pairformer_fb.kernel import prepare_reused_bias
    for N in (384, 1170):
        for prec, dt in (("bf16", bf), ("fp32", torch.float32)):
            g = torch.Generator(device="cuda").manual_seed(4)
            proj = torch.randn(5, N, 4, 16, 48, device=dev, dtype=dt, generator=g)
            q, k, v, gate = (t.transpose(1, 2) for t in proj.unbind(2))
            b = prepare_reused_bias(torch.randn(1, 16, N, N, device=dev, dtype=dt, generator=g))
            key = tfb.config_key("fwd", 64, 0, True)
            for cand in [(64, 64, 4, 3, 2), (64, 64, 4, 3, 1), (128, 64, 4, 3, 1), (128, 64, 8, 3, 1), (64, 32, 4, 3, 1),
                         (128, 32, 4, 3, 1), (64, 64, 4, 2, 1), (32, 64, 4, 3, 1)]:
                for order in ("1", "2"):
                    tfb.CONFIG_OVERRIDES[key] = tfb.KernelConfig(*cand); tfb._FITTED.clear()
                    tfb._FORCED_GRID_ORDER = order
                    try:
                        with torch.no_grad():
                            ms = bench(lambda: flash_bias_attention(q, k, v, bias=b, gate=gate))
                        log(f"  N={N} {prec} {cand} order={order}: {ms:.3f}")
                    except Exception as e:
                        log(f"  N={N} {prec} {cand} order={order}: {type(e).__name__} {str(e)[:80]}")
            tfb._FORCED_GRID_ORDER = None
            tfb.CONFIG_OVERRIDES.pop(key, None)
            with torch.no_grad():
                log(f"  N={N} {prec} SDPA no bias: {bench(lambda: F.scaled_dot_product_attention(q, k, v)):.3f}")
