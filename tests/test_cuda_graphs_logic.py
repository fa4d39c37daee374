"""The CUDA-graph wrapper's logic without CUDA (pairformer_fb.patching.cuda_graphs): keying,
varying vs fixed arguments, replay on static buffers, invalidation and relearning, fallbacks,
eviction, install / remove, and the tiny Protenix model (FlashBias-patched) graphed with the
EagerReplayBackend (graph semantics: replays re-run the captured closure on the static buffers
and write the static outputs in place). The GPU tests are tests/test_cuda_graphs.py."""

import os
import warnings

import pytest
import torch
from torch import nn

from pairformer_fb.patching.cuda_graphs import EagerReplayBackend, GraphedCall, graph_module


class Step(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x, t, ctx, scale=1.0):
        self.calls += 1
        return {"y": self.lin(x) * t[:, None] + ctx["z"].sum() * scale + ctx["n"], "aux": [x.sum()]}


def inputs(seed, z=None):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(3, 4, generator=g), torch.rand(3, generator=g)
    return x, t, {"z": torch.randn(5, generator=g) if z is None else z, "n": 2}


def eager(m, *a, **k):
    with torch.no_grad():
        return Step.forward.__get__(m)(*a, **k)


def check(out, ref):
    assert torch.allclose(out["y"], ref["y"]) and torch.allclose(out["aux"][0], ref["aux"][0])


@pytest.fixture
def step():
    torch.manual_seed(0)
    m = Step().eval()
    backend = EagerReplayBackend()
    handle = graph_module(m, backend=backend)
    yield m, backend, handle
    handle.remove()


def test_learn_capture_replay_with_changing_inputs(step):
    m, backend, handle = step
    z = torch.randn(5)
    outs = []
    for i in range(5):
        x, t, ctx = inputs(i, z)
        with torch.no_grad():
            out = m(x, t, ctx)
        check(out, eager(m, x, t, ctx))
        outs.append(out)
    (call,) = handle.calls
    assert backend.captures == 1 and backend.replays == 4  # call 2: capture + replay; calls 3-5: replay
    assert call.stats["eager"] == 1 and call.stats["replays"] == 4
    (entry,) = call._entries.values()
    assert sorted(entry.static_in) == [0, 1]  # x and t vary; z (fixed) read in place
    assert outs[2]["y"].data_ptr() != outs[3]["y"].data_ptr()  # outputs are clones


def test_fixed_argument_changes_relearn(step):
    m, backend, handle = step
    z = torch.randn(5)
    for i in range(3):
        with torch.no_grad():
            m(*inputs(i, z))
    with torch.no_grad():
        z.add_(1.0)  # in place: version counter moves
        x, t, ctx = inputs(10, z)
        check(m(x, t, ctx), eager(m, x, t, ctx))  # eager (learning again)
        for i in range(2):  # captured (z fixed again), replayed
            x, t, ctx = inputs(30 + i, z)
            check(m(x, t, ctx), eager(m, x, t, ctx))
        z2 = torch.randn(5)  # a new object (a new trunk pass)
        for i in range(3):
            x, t, ctx = inputs(20 + i, z2)
            check(m(x, t, ctx), eager(m, x, t, ctx))
    (call,) = handle.calls
    assert call.stats["invalidated"] == 2 and backend.captures == 3 and call.stats["eager"] == 3
    (entry,) = call._entries.values()
    assert sorted(entry.static_in) == [0, 1]


def test_parameter_updates_invalidate_unless_ignored():
    """An in-place update of a parameter invalidates the graph; of one in ``ignore_params`` (an
    optimizer step) it keeps the graph, whose replay reads the new value in place."""
    m = Step().eval()
    handle = graph_module(m, backend=EagerReplayBackend(), ignore_params=[m.lin.weight])
    call = handle.calls[0]
    z = torch.randn(5)
    with torch.no_grad():
        for i in range(3):
            m(*inputs(i, z))
        m.lin.weight.mul_(2.0)
        x, t, ctx = inputs(7, z)
        check(m(x, t, ctx), eager(m, x, t, ctx))
        assert call.stats["invalidated"] == 0 and call.stats["replays"] == 3
        m.lin.bias.add_(1.0)
        x, t, ctx = inputs(8, z)
        check(m(x, t, ctx), eager(m, x, t, ctx))
    assert call.stats["invalidated"] == 1
    handle.remove()


class WithFlashBias(nn.Module):
    """A FlashBias triangle attention with a factor network inside a graphed module."""

    def __init__(self):
        super().__init__()
        from pairformer_fb.modules.factor_network import FactorConfig
        from pairformer_fb.modules.triangle_attention import FlashBiasTriangleAttention

        config = FactorConfig(rank=2, width=8)
        self.attention = FlashBiasTriangleAttention(c_z=8, n_heads=2, head_dim=4, factor_config=config)

    def forward(self, z):
        out = self.attention(z)
        return out[0] if isinstance(out, tuple) else out


def test_flash_bias_modes_are_keyed_and_distill_passes_through():
    """The mode of the FlashBias modules inside is part of the key (a graph captured in one mode
    never replays in another); "distill" passes through (its loss is a Python attribute)."""
    torch.manual_seed(0)
    m = WithFlashBias().eval()
    handle = graph_module(m, backend=EagerReplayBackend())
    call = handle.calls[0]
    with torch.no_grad():
        for mode in ("exact", "lowrank", "exact"):
            m.attention.mode = mode
            for i in range(3):
                z = torch.randn(1, 6, 6, 8, generator=torch.Generator().manual_seed(i))
                assert torch.equal(m(z), m.attention(z)), (mode, i)  # graphed vs the module eager
        assert call.stats["captures"] == 2 and call.stats["invalidated"] == 0, call.stats
        m.attention.mode = "distill"
        before = call.stats["passthrough"]
        for i in range(3):
            m(torch.randn(1, 6, 6, 8))
        assert call.stats["passthrough"] == before + 3
    handle.remove()


def test_inference_mode_matches_by_identity_and_data_pointer(step):
    m, backend, handle = step
    with torch.inference_mode():
        z = torch.randn(5)
        for i in range(4):
            x, t, ctx = inputs(i, z)
            check(m(x, t, ctx), eager(m, x, t, ctx))
        (entry,) = handle.calls[0]._entries.values()
        assert sorted(entry.static_in) == [0, 1] and backend.replays == 3
        z2 = torch.randn(5)  # another object: relearned
        x, t, ctx = inputs(9, z2)
        check(m(x, t, ctx), eager(m, x, t, ctx))
    assert handle.calls[0].stats["invalidated"] == 1


def test_keys_and_eviction():
    m = Step().eval()
    backend = EagerReplayBackend()
    handle = graph_module(m, backend=backend, max_graphs=1)
    z = torch.randn(5)
    with torch.no_grad():
        for i in range(3):
            m(*inputs(i, z))
        # another shape: another key; the first key's graph is evicted (max_graphs=1)
        x, t = torch.randn(2, 4), torch.rand(2)
        for _ in range(3):
            out = m(x, t, {"z": z, "n": 2})
        check(out, eager(m, x, t, {"z": z, "n": 2}))
        out = m(*inputs(0, z), scale=3.0)  # a non-tensor value is part of the key
        check(out, eager(m, *inputs(0, z), scale=3.0))
    assert backend.captures == 2 and backend.releases >= 1 and len(handle.calls[0]._entries) == 1
    handle.remove()


def test_capture_failure_warns_once_and_runs_eagerly():
    m = Step().eval()
    handle = graph_module(m, backend=EagerReplayBackend(fail=True))
    z = torch.randn(5)
    with warnings.catch_warnings(record=True) as w, torch.no_grad():
        warnings.simplefilter("always")
        for i in range(5):
            x, t, ctx = inputs(i, z)
            check(m(x, t, ctx), eager(m, x, t, ctx))
    assert sum("capture failed" in str(x.message) for x in w) == 1
    assert handle.calls[0].stats["failed"] == 1 and handle.calls[0].stats["passthrough"] == 3
    handle.remove()


def test_training_grad_and_cpu_pass_through():
    m = Step()
    handle = graph_module(m, backend=EagerReplayBackend())
    z = torch.randn(5)
    for i in range(3):  # training mode
        m(*inputs(i, z))
    m.eval()
    for i in range(3):  # grad enabled and the parameters require grad
        out = m(*inputs(i, z))
    assert out["y"].requires_grad
    call = handle.calls[0]
    assert call.stats["passthrough"] == 6 and not call._entries
    handle.remove()
    # the real backend on a CPU: a transparent pass-through
    handle = graph_module(m)
    with torch.no_grad():
        for i in range(3):
            m(*inputs(i, z))
    assert handle.calls[0].stats["passthrough"] == 3 and not handle.calls[0]._entries
    handle.remove()


def test_relearning_without_replay_gives_up():
    m = Step().eval()
    backend = EagerReplayBackend()
    handle = graph_module(m, backend=backend, max_relearns=2)
    with warnings.catch_warnings(record=True) as w, torch.no_grad():
        warnings.simplefilter("always")
        for i in range(12):
            x, t, ctx = inputs(i)  # z new every call: it is "varying" at capture, but ...
            ctx["obj"] = object()  # ... an unkeyed object changes every call: never replayable
            m(x, t, ctx)
    assert any("invalidated 2 times" in str(x.message) for x in w)
    assert backend.captures == 2 and handle.calls[0].stats["passthrough"] > 0
    handle.remove()


def test_remove_restores_forward_and_signature():
    import inspect

    m = Step().eval()
    handle = graph_module(m, backend=EagerReplayBackend())
    assert isinstance(m.forward, GraphedCall)
    assert list(inspect.signature(m.forward).parameters) == ["x", "t", "ctx", "scale"]
    with pytest.raises(RuntimeError, match="already graphed"):
        graph_module(m)
    handle.remove()
    assert "forward" not in m.__dict__ and not isinstance(m.forward, GraphedCall)
    graph_module(m).remove()  # can be graphed again


# ---------------------------------------------------------------------------------------------
# the tiny Protenix, FlashBias-patched and graphed (EagerReplayBackend)

os.environ.setdefault("LAYERNORM_TYPE", "torch")


@pytest.fixture(scope="module")
def protenix_model():
    try:
        from protenix.model.protenix import Protenix
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"protenix cannot be imported ({type(e).__name__}: {e})")
    from host_models import randomise_
    from test_patch_full_models import protenix_features

    from pairformer_fb.hosts.protenix.presets import protenix_configs

    configs = protenix_configs("tiny", {"sample_diffusion.N_sample": 2, "sample_diffusion.N_step": 4}, cpu=True)
    torch.manual_seed(0)
    model = randomise_(Protenix(configs)).eval()
    return model, protenix_features(n_token=12, seed=0), protenix_features(n_token=12, seed=1)


def run_coordinates(model, feats):
    from test_patch_full_models import seed_all

    seed_all(0)
    with torch.no_grad():
        pred, _, _ = model({k: v.clone() for k, v in feats.items()}, None, None, mode="inference")
    return pred["coordinate"]


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")
def test_protenix_patched_and_graphed(protenix_model):
    from naive import rel_err

    import pairformer_fb as fb
    from pairformer_fb.patching.patching import patched_modules

    model, feats, other = protenix_model
    ref, ref_other = run_coordinates(model, feats), run_coordinates(model, other)
    backend = EagerReplayBackend()
    handle = fb.graph_diffusion(model, backend=backend)
    assert [type(m).__name__ for m in [r() for r in handle._modules]] == ["DiffusionModule"]
    try:
        assert torch.equal(run_coordinates(model, feats), ref)  # graphed host: same function
        (call,) = handle.calls
        assert call.stats["eager"] == 1 and call.stats["captures"] == 1 and call.stats["replays"] == 3
        (entry,) = call._entries.values()
        names = ["x_noisy", "t_hat_noise_level"]
        assert len(entry.static_in) == 2, names  # only the two per-step arguments vary

        fb.patch_model(model, kinds=("diffusion", "atom"), stacks=("diffusion", "input"))
        assert not call._entries  # patching dropped the graphs
        assert rel_err(run_coordinates(model, feats), ref) < 1e-4
        caches = {
            p: m.flash_bias.bias_cache for p, m in patched_modules(model).items() if p.startswith("diffusion_module")
        }
        # filled once (eager call 1), read at the capture (and, with this backend, at every replay)
        assert caches and all(c.misses == 1 and c.hits >= 1 for c in caches.values())
        assert call.stats["captures"] == 2 and call.stats["replays"] == 6
        # a new trunk pass (new s_trunk / pair_z objects): relearned and recaptured, never stale
        assert rel_err(run_coordinates(model, other), ref_other) < 1e-4
        assert call.stats["captures"] == 3 and call.stats["invalidated"] >= 1
        fb.unpatch_model(model)
        assert torch.equal(run_coordinates(model, feats), ref)
    finally:
        handle.remove()
        if patched_modules(model):
            fb.unpatch_model(model)
    assert "forward" not in model.diffusion_module.__dict__
    assert torch.equal(run_coordinates(model, feats), ref)
