"""patch_model's ``confidence_per_sample`` (hosts/protenix/confidence.py): Protenix's confidence
head run one diffusion sample per call gives every output of the full model (coordinates,
plddt, pae, pde, resolved, the summary confidences) bit for bit as the host's own loop, on the
tiny Protenix with three samples; the host's forward is what runs (once per sample, on that
sample's coordinates); unpatch_model and a deep copy behave; a bad value is one clear error."""

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
from pairformer_fb.hosts.protenix.confidence import CONFIDENCE_CLASS, SAMPLE_DIMS
from pairformer_fb.patching.patching import PER_SAMPLE_MARK, patched_modules

SAMPLES = 3
OUTPUTS = ("plddt", "pae", "pde", "resolved")


@pytest.fixture(scope="module")
def model_and_features():
    from protenix.model.protenix import Protenix

    from pairformer_fb.hosts.protenix.presets import protenix_configs

    configs = protenix_configs("tiny", {"sample_diffusion.N_sample": SAMPLES, "sample_diffusion.N_step": 2}, cpu=True)
    torch.manual_seed(0)
    model = randomise_(Protenix(configs)).eval()
    return model, protenix_features(n_token=10, seed=0)


def predict(model, feats):
    seed_all(0)
    with torch.no_grad():
        pred, _, _ = model({k: v.clone() for k, v in feats.items()}, None, None, mode="inference")
    return pred


def head_calls(monkeypatch, model):
    """Record the number of samples of every call of the host class's own forward."""
    head = model.confidence_head
    cls, host_forward, calls = type(head), type(head).forward, []

    @functools.wraps(host_forward)  # the per-sample forward reads the host's signature
    def spy(self, *args, **kwargs):
        coords = inspect.signature(host_forward).bind(self, *args, **kwargs).arguments["x_pred_coords"]
        calls.append(coords.shape[-3])
        return host_forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", spy)
    return calls


def assert_same_prediction(got, ref):
    for key in ("coordinate", *OUTPUTS):
        assert got[key].shape == ref[key].shape and got[key].dtype == ref[key].dtype, key
        assert torch.equal(got[key], ref[key]), key
    for a, b in zip(got["summary_confidence"], ref["summary_confidence"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def test_one_sample_per_call_is_bit_identical(model_and_features, monkeypatch):
    """The same patch with and without it: every output equal bit for bit (the patched trunk
    itself differs from the host's by rounding, so the reference is the patch without it)."""
    model, feats = model_and_features
    head = model.confidence_head
    assert type(head).__name__ == CONFIDENCE_CLASS
    calls = head_calls(monkeypatch, model)
    host = predict(model, feats)
    assert calls == [SAMPLES]  # the host alone: one call with every sample
    assert host["pae"].shape[-4] == SAMPLES and host["plddt"].shape[-3] == SAMPLES
    # the samples differ, so a mixed-up order or dimension could not pass
    for key, dim in zip(OUTPUTS, SAMPLE_DIMS):
        assert not torch.equal(host[key].narrow(dim, 0, 1), host[key].narrow(dim, 1, 1)), key

    calls.clear()
    report = fb.patch_model(model, confidence_per_sample=False)
    try:
        assert report.per_sample == [] and "forward" not in vars(head)
        ref = predict(model, feats)
        assert calls == [SAMPLES]
    finally:
        fb.unpatch_model(model)

    calls.clear()
    report = fb.patch_model(model)  # the default
    try:
        assert report.per_sample == ["confidence_head"] and "one sample per call" in str(report)
        assert getattr(head, PER_SAMPLE_MARK) and "forward" in vars(head)
        got = predict(model, feats)
        assert calls == [1] * SAMPLES
        assert_same_prediction(got, ref)

        twin = copy.deepcopy(model)  # the per-sample forward is rebound to the copy's head
        assert twin.confidence_head.forward.__self__ is twin.confidence_head
    finally:
        fb.unpatch_model(model)
    assert "forward" not in vars(head) and not hasattr(head, PER_SAMPLE_MARK)
    calls.clear()
    assert_same_prediction(predict(model, feats), host)
    assert calls == [SAMPLES]


def test_bad_values_name_the_argument(model_and_features):
    model, _ = model_and_features
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="confidence_per_sample must be True or False"):
            fb.patch_model(model, confidence_per_sample=bad)
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
