"""CUDA graphs on a GPU (pairformer_fb.patching.cuda_graphs with the real CudaGraphBackend); every
test is skipped without CUDA. Run alone on the device:

    PYTHONPATH=$PWD python -m pytest -q -rs tests/test_cuda_graphs.py

* a small module (layer norm, linears, a dict argument) graphed equals eager over several steps
  with changing inputs, in fp32 and under bf16 autocast; in-place change of a fixed input and a
  new fixed input relearn;
* the tiny Protenix (fp32) on CUDA: graphed host == unpatched; FlashBias exact + graphed ==
  unpatched (fp32 tolerance of the Triton kernels); bf16 autocast patched + graphed close to the
  unpatched bf16 run; a second trunk pass (new z) recaptures and stays exact; handle.remove()
  restores the module.
The CPU tests of the same logic: tests/test_cuda_graphs_logic.py.
"""

import os

import pytest
import torch
from torch import nn

from pairformer_fb.patching.cuda_graphs import graph_module

pytestmark = pytest.mark.gpu  # skipped without CUDA (conftest); selected by `pytest -m gpu`


class Step(nn.Module):
    def __init__(self, c=64):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.a = nn.Linear(c, 4 * c)
        self.b = nn.Linear(4 * c, c)

    def forward(self, x, t, ctx):
        h = self.norm(x + ctx["z"]) * (1 + t[:, None, None])
        return x + self.b(torch.relu(self.a(h))) + ctx["bias"]


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_small_module_graphed_equals_eager(dtype):
    torch.manual_seed(0)
    m = Step().cuda().eval()
    z, bias = torch.randn(1, 16, 64, device="cuda"), torch.randn(64, device="cuda")
    handle = graph_module(m)
    try:
        x = torch.randn(2, 16, 64, device="cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            for step in range(6):
                t = torch.rand(2, device="cuda")
                out = m(x, t, {"z": z, "bias": bias})
                ref = Step.forward(m, x, t, {"z": z, "bias": bias})
                assert rel_err(out, ref) < (1e-6 if dtype == torch.float32 else 1e-2), step
                x = out.float()  # the next step's input depends on this one's output
            (call,) = handle.calls
            assert call.stats["captures"] == 1 and call.stats["replays"] == 5, call.stats
            z.mul_(2.0)  # a fixed input changed in place: relearn
            t = torch.rand(2, device="cuda")
            assert rel_err(m(x, t, {"z": z, "bias": bias}), Step.forward(m, x, t, {"z": z, "bias": bias})) < 1e-2
            z2 = torch.randn(1, 16, 64, device="cuda")  # a new fixed input: relearn + recapture
            for _ in range(3):
                t = torch.rand(2, device="cuda")
                out = m(x, t, {"z": z2, "bias": bias})
                assert rel_err(out, Step.forward(m, x, t, {"z": z2, "bias": bias})) < 1e-2
        # the learning call after the in-place change saw z; z2 then differs from it, so that
        # argument is learned as varying (copied into the graph's buffer): one more capture
        assert call.stats["captures"] == 2 and call.stats["failed"] == 0, call.stats
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------
# the tiny Protenix on CUDA

os.environ.setdefault("LAYERNORM_TYPE", "torch")


@pytest.fixture(scope="module")
def protenix_cuda():
    try:
        from protenix.model.protenix import Protenix
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"protenix cannot be imported ({type(e).__name__}: {e})")
    from host_models import randomise_
    from test_patch_full_models import protenix_features

    from pairformer_fb.hosts.protenix.presets import protenix_configs

    configs = protenix_configs("tiny", {"sample_diffusion.N_sample": 2, "sample_diffusion.N_step": 6}, cpu=True)
    torch.manual_seed(0)
    model = randomise_(Protenix(configs)).cuda().eval()
    feats = [{k: v.cuda() for k, v in protenix_features(n_token=12, seed=s).items()} for s in (0, 1)]
    return model, feats


def coordinates(model, feats, bf16=False):
    from test_patch_full_models import seed_all

    seed_all(0)
    torch.cuda.manual_seed_all(0)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        pred, _, _ = model({k: v.clone() for k, v in feats.items()}, None, None, mode="inference")
    return pred["coordinate"].float()


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_protenix_patched_and_graphed_matches_unpatched(protenix_cuda, bf16, no_tf32):
    """Graphed vs the same model eager (tight: the same kernels replayed) and FlashBias exact +
    graphed vs unpatched (fp32: the Triton kernels' 1e-4; bf16: loose, random weights amplify
    bf16 rounding over the steps)."""
    import pairformer_fb as fb
    from pairformer_fb.patching.patching import patched_modules

    model, (feats, other) = protenix_cuda
    ref, ref_other = coordinates(model, feats, bf16), coordinates(model, other, bf16)
    same = 1e-2 if bf16 else 1e-5  # graphed vs eager of the same model
    tol = 5e-2 if bf16 else 1e-4  # patched vs unpatched
    handle = fb.graph_diffusion(model)
    try:
        graphed_host = coordinates(model, feats, bf16)
        (call,) = handle.calls
        assert call.stats["captures"] == 1 and call.stats["replays"] == 5 and call.stats["failed"] == 0, call.stats
        assert rel_err(graphed_host, ref) < same
        handle.remove()

        fb.patch_model(model, kinds=("diffusion", "atom"), stacks=("diffusion", "input"))
        ref_patched, ref_patched_other = coordinates(model, feats, bf16), coordinates(model, other, bf16)
        assert rel_err(ref_patched, ref) < tol
        handle = fb.graph_diffusion(model)  # graphing a patched model (the other order than above)
        (call,) = handle.calls
        out = coordinates(model, feats, bf16)
        assert call.stats["captures"] == 1 and call.stats["replays"] == 5 and call.stats["failed"] == 0, call.stats
        assert rel_err(out, ref_patched) < same and rel_err(out, ref) < tol
        for path, m in patched_modules(model).items():
            if path.startswith("diffusion_module"):  # computed at step 1; the graph reads it (no lookups)
                assert m.flash_bias.bias_cache.misses == 3, path  # one per prediction
        # a second trunk pass: the graph is invalidated, relearned, recaptured; never stale
        out_other = coordinates(model, other, bf16)
        assert rel_err(out_other, ref_patched_other) < same and rel_err(out_other, ref_other) < tol
        assert call.stats["captures"] == 2 and call.stats["invalidated"] == 1, call.stats
        # the first inputs again: a third pass, still exact
        assert rel_err(coordinates(model, feats, bf16), ref_patched) < same
        # patch_model after graph_diffusion (the first order): unpatch resets the graphs
        fb.unpatch_model(model)
        assert not handle.calls[0]._entries
        assert rel_err(coordinates(model, feats, bf16), ref) < same
    finally:
        handle.remove()
        if patched_modules(model):
            fb.unpatch_model(model)
    assert "forward" not in model.diffusion_module.__dict__
    # (GPU scatter-adds are not bitwise deterministic: a tolerance, not torch.equal)
    assert rel_err(coordinates(model, feats, bf16), ref) < same
