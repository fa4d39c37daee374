"""patch_model's ``lean_memory`` on Protenix (hosts/protenix/lean.py): its confidence head run
one diffusion sample per call and its diffusion pair conditioning (``prepare_cache``) made in
rows give every output of the full model (coordinates, plddt, pae, pde, resolved, the summary
confidences) bit for bit as the host's own methods, on the tiny Protenix with three samples; the
host's methods are what run (once per sample / once per row chunk); unpatch_model and a deep
copy behave; a bad value is one clear error."""

import copy
import functools
import inspect

import pytest
import torch
from host_stacks import PROTENIX

if PROTENIX.skip:
    pytest.skip(PROTENIX.skip, allow_module_level=True)

from host_models import randomise_
from test_patch_full_models import protenix_features, seed_all

import pairformer_fb as fb
from pairformer_fb.hosts.protenix.lean import SAMPLE_DIMS
from pairformer_fb.modules import diffusion_attention
from pairformer_fb.patching.patching import LEAN_MARK, patched_modules

SAMPLES, TOKENS = 3, 10
OUTPUTS = ("plddt", "pae", "pde", "resolved")
LEAN = [
    "relative_position_encoding.generate_relp",
    "diffusion_module.diffusion_conditioning.prepare_cache",
    "diffusion_module.diffusion_conditioning.relpe.generate_relp",  # Protenix's, unused there
    "confidence_head.forward",
]


@pytest.fixture(scope="module")
def model_and_features():
    from protenix.model.protenix import Protenix

    from pairformer_fb.hosts.protenix.presets import protenix_configs

    configs = protenix_configs("tiny", {"sample_diffusion.N_sample": SAMPLES, "sample_diffusion.N_step": 2}, cpu=True)
    torch.manual_seed(0)
    model = randomise_(Protenix(configs)).eval()
    return model, protenix_features(n_token=TOKENS, seed=0)


def predict(model, feats):
    seed_all(0)
    with torch.no_grad():
        pred, _, _ = model({k: v.clone() for k, v in feats.items()}, None, None, mode="inference")
    return pred


def spy(monkeypatch, module, method, argument, measure):
    """Record ``measure(argument)`` of every call of the host class's own ``method``."""
    cls = type(module)
    host, calls = getattr(cls, method), []

    @functools.wraps(host)  # the lean methods read the host's signature
    def wrapped(self, *args, **kwargs):
        calls.append(measure(inspect.signature(host).bind(self, *args, **kwargs).arguments[argument]))
        return host(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, wrapped)
    return calls


def assert_same_prediction(got, ref):
    for key in ("coordinate", *OUTPUTS):
        assert got[key].shape == ref[key].shape and got[key].dtype == ref[key].dtype, key
        assert torch.equal(got[key], ref[key]), key
    for a, b in zip(got["summary_confidence"], ref["summary_confidence"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def test_lean_methods_are_bit_identical(model_and_features, monkeypatch):
    """The same patch with and without lean_memory: every output equal bit for bit (the patched
    trunk itself differs from the host's by rounding, so the reference is the patch without
    it). The pair conditioning is forced into row chunks of 5 (of 10) rows."""
    model, feats = model_and_features
    head, conditioning = model.confidence_head, model.diffusion_module.diffusion_conditioning
    samples = spy(monkeypatch, head, "forward", "x_pred_coords", lambda x: x.shape[-3])
    rows = spy(monkeypatch, conditioning, "prepare_cache", "z_trunk", lambda z: z.shape[-3])
    c_z = model.configs.c_z
    monkeypatch.setattr(diffusion_attention, "PAIR_CHUNK_BYTES", 5 * TOKENS * 2 * c_z * 4)  # 5 rows a chunk
    host = predict(model, feats)
    assert samples == [SAMPLES] and rows == [TOKENS]  # the host alone: one call each
    assert host["pae"].shape[-4] == SAMPLES and host["plddt"].shape[-3] == SAMPLES
    # the samples differ, so a mixed-up order or dimension could not pass
    for key, dim in zip(OUTPUTS, SAMPLE_DIMS):
        assert not torch.equal(host[key].narrow(dim, 0, 1), host[key].narrow(dim, 1, 1)), key

    samples.clear(), rows.clear()
    report = fb.patch_model(model, lean_memory=False)
    try:
        assert report.lean == [] and "forward" not in vars(head) and "prepare_cache" not in vars(conditioning)
        ref = predict(model, feats)
        assert samples == [SAMPLES] and rows == [TOKENS]
    finally:
        fb.unpatch_model(model)

    samples.clear(), rows.clear()
    report = fb.patch_model(model)  # the default
    try:
        assert report.lean == LEAN and "lean host methods" in str(report)
        assert getattr(head, LEAN_MARK) == ("forward",) and "forward" in vars(head)
        assert getattr(conditioning, LEAN_MARK) == ("prepare_cache",)
        got = predict(model, feats)
        assert samples == [1] * SAMPLES and rows == [5, 5]
        assert_same_prediction(got, ref)

        twin = copy.deepcopy(model)  # the lean methods are rebound to the copy's modules
        assert twin.confidence_head.forward.__self__ is twin.confidence_head
        twin_conditioning = twin.diffusion_module.diffusion_conditioning
        assert twin_conditioning.prepare_cache.__self__ is twin_conditioning
    finally:
        fb.unpatch_model(model)
    for m, method in ((head, "forward"), (conditioning, "prepare_cache")):
        assert method not in vars(m) and not hasattr(m, LEAN_MARK)
    samples.clear(), rows.clear()
    assert_same_prediction(predict(model, feats), host)
    assert samples == [SAMPLES] and rows == [TOKENS]


def test_inference_gives_back_relp_at_the_confidence_head(model_and_features):
    """In inference the lean head replaces the features' relp (made by the host in the caller's
    dict, unused once the sampling is over) by a meta tensor of its shape: no memory, and any
    later use fails loudly; the outputs are those of the patch without lean methods, which keeps
    it, as does the host alone. With autograd on, the lean head keeps it too."""
    model, feats = model_and_features

    def run(grad=False, **patch):
        fb.patch_model(model, **patch)
        try:
            seed_all(0)
            mine = {k: v.clone() for k, v in feats.items()}  # Protenix consumes the dict it is given
            with torch.set_grad_enabled(grad):
                pred, _, _ = model(mine, None, None, mode="inference")
        finally:
            fb.unpatch_model(model)
        return mine, pred

    kept, ref = run(lean_memory=False)
    relp = kept["relp"]
    assert relp.device.type == "cpu" and relp.dim() == 3 and relp.shape[:2] == (TOKENS, TOKENS)
    mine, got = run()
    assert mine["relp"].device.type == "meta" and mine["relp"].shape == relp.shape
    assert mine["relp"].dtype == relp.dtype
    with pytest.raises((RuntimeError, NotImplementedError)):
        mine["relp"].cpu()
    assert_same_prediction(got, ref)
    with_grad, _ = run(grad=True)
    assert with_grad["relp"].device.type == "cpu"


def test_bad_values_name_the_argument(model_and_features):
    model, _ = model_and_features
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="lean_memory must be True or False"):
            fb.patch_model(model, lean_memory=bad)
    assert "forward" not in vars(model.confidence_head) and not patched_modules(model)


def test_outputs_assembled_in_sample_order_and_training_runs_the_host_loop(model_and_features, monkeypatch):
    """With a stand-in for the host's forward whose outputs carry each sample's coordinates: the
    per-sample forward puts call i's outputs at sample i of each output's sample dimension. In
    training mode the host's forward runs once with every sample (autograd would sum the
    per-sample gradients in another order)."""
    model, _ = model_and_features
    head = model.confidence_head
    calls = []

    def stand_in(self, input_feature_dict, s_inputs, s_trunk, z_trunk, pair_mask, x_pred_coords, **kwargs):
        calls.append(x_pred_coords.shape[-3])
        n, tag = x_pred_coords.shape[-3], x_pred_coords[..., 0, 0]  # [N_sample]
        return (
            tag[:, None, None].expand(n, 4, 2).clone(),  # plddt [N_sample, N_atom, bins]
            tag[:, None, None, None].expand(n, 3, 3, 5).clone(),  # pae [N_sample, N, N, bins]
            -tag[:, None, None, None].expand(n, 3, 3, 5).clone(),  # pde
            tag[:, None, None].expand(n, 4, 2).double(),  # resolved, another dtype
        )

    monkeypatch.setattr(type(head), "forward", stand_in)
    coords = torch.arange(SAMPLES, dtype=torch.float32)[:, None, None].expand(SAMPLES, 4, 3).clone()
    fb.patch_model(model)
    try:
        outs = head({}, None, None, None, None, x_pred_coords=coords)
        assert calls == [1] * SAMPLES
        want = stand_in(head, {}, None, None, None, None, x_pred_coords=coords)
        for got, ref in zip(outs, want, strict=True):
            assert got.dtype == ref.dtype and torch.equal(got, ref)
        calls.clear()
        head.train()
        head({}, None, None, None, None, x_pred_coords=coords)
        assert calls == [SAMPLES]
    finally:
        head.eval()
        fb.unpatch_model(model)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_pair_conditioning_in_rows_equals_the_whole(model_and_features, monkeypatch, device):
    """The pair conditioning made in row chunks (uneven: the last one shorter) equals the host's
    made at once: bit for bit on the CPU, at a width and length where each chunk holds enough
    pairs for the matrix products to block alike; on CUDA, where cuBLAS picks its kernels by shape,
    the chunks' error against the same computation in fp64 is no larger than the host's own
    (see hosts/protenix/lean.py)."""
    from pairformer_fb.hosts.protenix.lean import lean_methods

    conditioning = copy.deepcopy(model_and_features[0].diffusion_module.diffusion_conditioning).to(device)
    n, c_z = 96, conditioning.c_z
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, n, c_z, generator=g).to(device)
    relp = (torch.rand(n, n, 139, generator=g) < 0.05).float().to(device)
    lean = lean_methods(conditioning)["prepare_cache"]
    with torch.no_grad():
        whole = conditioning.prepare_cache(relp, z, False)
        assert torch.equal(lean(relp, z, False), whole)  # under 1 GiB: the host's, at once
        exact = copy.deepcopy(conditioning).double().prepare_cache(relp.double(), z.double(), False)
        host_error = (whole.double() - exact).abs().max().item()
        for rows in (1, 7, 40):
            monkeypatch.setattr(diffusion_attention, "PAIR_CHUNK_BYTES", rows * n * 2 * c_z * 4)
            chunked = lean(relp, z, False)
            if device == "cpu":
                assert torch.equal(chunked, whole), rows
            else:
                error = (chunked.double() - exact).abs().max().item()
                assert error <= 2 * host_error, (rows, error, host_error)


def test_relative_position_features_without_int64_one_hots(model_and_features):
    """The lean ``generate_relp`` gives the host's fp32 ``relp`` bit for bit on several chains,
    entities and copies, and makes no int64 tensor of the pairs' size times the classes (the
    host's one-hots and their concatenation, ~78 GiB at 6,144 tokens)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from pairformer_fb.hosts.protenix.lean import lean_methods

    encoding = model_and_features[0].relative_position_encoding
    n = 60
    g = torch.Generator().manual_seed(1)
    asym = torch.sort(torch.randint(0, 4, (n,), generator=g)).values
    feats = {
        "asym_id": asym,
        "entity_id": asym // 2,
        "sym_id": asym % 2,
        "residue_index": torch.randint(0, 80, (n,), generator=g),
        "token_index": torch.arange(n),
    }
    host = type(encoding).generate_relp(encoding, dict(feats))["relp"]

    class Largest(TorchDispatchMode):
        int64_elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.int64:
                    self.int64_elements = max(self.int64_elements, t.numel())
            return out

    with Largest() as spy:
        lean = lean_methods(encoding)["generate_relp"](dict(feats))["relp"]
    assert lean.dtype == host.dtype == torch.float32 and torch.equal(lean, host)
    assert host.shape[-1] > 100 and spy.int64_elements <= n * n, spy.int64_elements
