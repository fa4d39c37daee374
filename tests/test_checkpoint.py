"""Checkpoint I/O (pairformer_fb.convert.checkpoint) on small real host models saved in each host's
own container format: Protenix ``.pt`` ({"model": ...}, DDP "module." prefix), Boltz-2 Lightning
``.ckpt`` ("state_dict", "hyper_parameters", "ema") and OpenFold3 (plain state dict; Lightning
with "model." prefix and "ema" params). Each host's cases are skipped without its package."""

import dataclasses
import datetime
import hashlib
import importlib.metadata
import os
import pickle
from dataclasses import dataclass

import pytest
import torch
from torch import nn

os.environ.setdefault("LAYERNORM_TYPE", "torch")  # protenix without CUDA: no fused layer norm build

from host_models import randomise_
from host_stacks import BOLTZ, OPENFOLD3, PROTENIX

import pairformer_fb as fb
from pairformer_fb.convert.checkpoint import (
    CheckpointError,
    HostCheckpoint,
    make_metadata,
    read_checkpoint,
    strip_checkpoint,
    write_checkpoint_atomic,
)
from pairformer_fb.modules import FactorConfig

# the host models' CUDA autocast warns on CPU
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")


@dataclass
class TrainArgs:
    """A non-tensor object in hyper_parameters, as Lightning checkpoints have: weights_only=True
    refuses it."""

    lr: float = 1e-3


# host -> (stack builder, the stack's attribute in the full host model)
# (the stacks of host_stacks.py, the hosts' small trunk stacks, with 2 blocks)
HOST_STACKS = {
    "protenix": (PROTENIX.make_stack, "pairformer_stack"),
    "boltz": (BOLTZ.make_stack, "pairformer_module"),
    "openfold3": (OPENFOLD3.make_stack, "pairformer_stack"),
}


def make_model(host):
    """A stand-in for the full host model: the host's trunk Pairformer (2 blocks) under its real
    attribute name plus another head, so the state dict has the full model's key names."""
    builder, attr = HOST_STACKS[host]
    try:
        stack = builder(n_blocks=2)
    except ImportError as e:
        pytest.skip(f"{host} cannot be imported: {e}")
    torch.manual_seed(0)
    model = nn.Module()
    setattr(model, attr, stack)
    model.distogram_head = nn.Linear(16, 8)
    return randomise_(model).eval()


def host_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# format -> (host, file suffix, container from the model's state dict, prefix, location)
def _protenix(sd):
    return {
        "model": {"module." + k: v for k, v in sd.items()},
        "optimizer": {"state": {}, "param_groups": []},
        "step": 7,
    }


def _boltz(sd):
    return {
        "state_dict": dict(sd),
        "hyper_parameters": {"args": TrainArgs(), "ema": True},
        "epoch": 3,
        "ema": {"cur_step": 5, "ema_weights": {k: v * 0.5 for k, v in sd.items()}},
    }


def _openfold3_plain(sd):
    return dict(sd)


def _openfold3_lightning(sd):
    return {
        "state_dict": {"model." + k: v for k, v in sd.items()},
        "epoch": 1,
        "ema": {"params": {k: v * 0.5 for k, v in sd.items()}, "decay": 0.999},
    }


def _openfold3_deepspeed(sd):
    return {"module": {"model." + k: v for k, v in sd.items()}, "ema": {"params": dict(sd), "decay": 0.0}}


FORMATS = {
    "protenix": ("protenix", ".pt", _protenix, "module.", ("model",)),
    "boltz": ("boltz", ".ckpt", _boltz, "", ("state_dict",)),
    "openfold3-plain": ("openfold3", ".pt", _openfold3_plain, "", ()),
    "openfold3-lightning": ("openfold3", ".ckpt", _openfold3_lightning, "model.", ("state_dict",)),
    "openfold3-deepspeed": ("openfold3", ".pt", _openfold3_deepspeed, "model.", ("module",)),
}


def saved(tmp_path, fmt):
    """(model, its state dict, the file) of a format."""
    host, suffix, wrap, _, _ = FORMATS[fmt]
    model = make_model(host)
    sd = host_state(model)
    path = tmp_path / f"{fmt}{suffix}"
    torch.save(wrap(sd), path)
    return model, sd, path


def assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_detects_host_and_strips_the_prefix(tmp_path, fmt):
    host, _, _, prefix, location = FORMATS[fmt]
    model, sd, path = saved(tmp_path, fmt)
    ckpt = read_checkpoint(path)
    assert isinstance(ckpt, HostCheckpoint)
    assert (ckpt.host, ckpt.prefix, ckpt.location, ckpt.path) == (host, prefix, location, path)
    assert ckpt.metadata is None
    assert_same_state(ckpt.state_dict, sd)
    model.load_state_dict(ckpt.state_dict)  # strict: the model's own keys
    assert read_checkpoint(path, host=host).host == host
    if fmt in ("boltz", "openfold3-lightning", "openfold3-deepspeed"):
        ema = read_checkpoint(path, use_ema=True)
        assert ema.host == host and ema.location[0] == "ema" and ema.prefix == ""
        assert_same_state(ema.state_dict, {k: v * (1 if fmt == "openfold3-deepspeed" else 0.5) for k, v in sd.items()})
    else:
        with pytest.raises(CheckpointError, match="no EMA weights"):
            read_checkpoint(path, use_ema=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_make_container_puts_a_state_dict_back_in_the_host_format(tmp_path, fmt):
    _, _, path = saved(tmp_path, fmt)
    ckpt = read_checkpoint(path)
    original = torch.load(path, weights_only=False)
    rebuilt = ckpt.make_container(ckpt.state_dict)
    assert list(rebuilt) == list(original)
    raw, raw_original = rebuilt, original
    for key in ckpt.location:
        raw, raw_original = raw[key], raw_original[key]
    assert_same_state(raw, raw_original)
    other = {k: v + 1 for k, v in ckpt.state_dict.items()}
    changed = ckpt.make_container(other, metadata={"x": 1})
    assert changed["pairformer_fb"] == {"x": 1} and "pairformer_fb" not in ckpt.container  # a copy
    out = write_checkpoint_atomic(changed, tmp_path / "changed.pt", input_path=path)
    assert_same_state(read_checkpoint(out).state_dict, other)


def test_loads_with_weights_only_unless_the_container_needs_pickle(tmp_path, monkeypatch):
    _, _, protenix_path = saved(tmp_path, "protenix")
    _, _, boltz_path = saved(tmp_path, "boltz")
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    read_checkpoint(protenix_path)
    assert calls == [True]
    calls.clear()
    ckpt = read_checkpoint(boltz_path)  # hyper_parameters holds a TrainArgs
    assert calls == [True, False] and ckpt.container["hyper_parameters"]["args"] == TrainArgs()
    with pytest.raises(CheckpointError, match="allow_pickle=False"):
        read_checkpoint(boltz_path, allow_pickle=False)


def test_write_is_atomic_and_refuses_to_overwrite_the_input(tmp_path, monkeypatch):
    _, sd, path = saved(tmp_path, "protenix")
    container = torch.load(path, weights_only=True)
    before = path.read_bytes()
    # the input itself, by the same path, a relative path and a link
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.pt"
    link.symlink_to(path)
    for out in (path, str(path), path.name, link, tmp_path / "sub" / ".." / path.name):
        with pytest.raises(ValueError, match="is the input checkpoint"):
            write_checkpoint_atomic(container, out, input_path=path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.pt", "protenix.pt"]

    out = write_checkpoint_atomic(container, tmp_path / "out.pt", input_path=path)
    assert_same_state(read_checkpoint(out).state_dict, sd)
    # a failing save leaves the old output whole and no temporary file
    out_bytes = out.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        write_checkpoint_atomic({"model": container["model"], "bad": lambda: 0}, out)
    assert out.read_bytes() == out_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.pt", "out.pt", "protenix.pt"]
    with pytest.raises(FileNotFoundError, match="directory does not exist"):
        write_checkpoint_atomic(container, tmp_path / "missing" / "out.pt")
    with pytest.raises(IsADirectoryError):
        write_checkpoint_atomic(container, tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_convert_with_metadata_then_strip_gives_back_the_host_checkpoint(tmp_path, fmt):
    host = FORMATS[fmt][0]
    model, sd, path = saved(tmp_path, fmt)
    ckpt = read_checkpoint(path)
    model.load_state_dict(ckpt.state_dict)
    config = FactorConfig(rank=4, width=16, depth=1)
    report = fb.patch_model(model, mode={"lowrank": [0], "exact": ...}, factor_config=config)
    patched_sd = model.state_dict()
    added = [k for k in patched_sd if k not in sd]
    assert added and all(".factor_network." in k and (".blocks.0." in k or ".layers.0." in k) for k in added)
    metadata = make_metadata(host, report, config, path)
    converted = ckpt.make_container(patched_sd, metadata=metadata)
    if "ema" in converted:  # fine-tuned EMA weights hold the factor networks too
        ema_key = "ema_weights" if host == "boltz" else "params"
        converted["ema"][ema_key] = {**converted["ema"][ema_key], **{k: patched_sd[k] for k in added}}
    out = write_checkpoint_atomic(converted, tmp_path / f"converted{path.suffix}", input_path=path)

    back = read_checkpoint(out)
    assert back.host == host and back.metadata == metadata and back.prefix == ckpt.prefix
    assert set(back.state_dict) == set(sd) | set(added)
    model.load_state_dict(back.state_dict)  # strict: the patched model's keys
    if "ema" in converted:
        assert set(added) <= set(read_checkpoint(out, use_ema=True).state_dict)

    original = torch.load(path, weights_only=False)
    stripped = strip_checkpoint(back.container)
    assert "pairformer_fb" in back.container and any(".factor_network." in k for k in back.state_dict)  # unchanged
    assert list(stripped) == list(original)
    assert_same_state(_tensors(stripped), _tensors(original))
    # written and read again: the host's own checkpoint, bit for bit
    plain = write_checkpoint_atomic(stripped, tmp_path / f"plain{path.suffix}")
    again = read_checkpoint(plain, host=host)
    assert again.metadata is None and (again.location, again.prefix) == (ckpt.location, ckpt.prefix)
    assert_same_state(_tensors(torch.load(plain, weights_only=False)), _tensors(original))
    fb.unpatch_model(model)
    model.load_state_dict(again.state_dict)  # strict: the host model's keys


def _tensors(container, prefix=""):
    """Every tensor of a nested container by its key path."""
    if torch.is_tensor(container):
        return {prefix: container}
    out = {}
    if isinstance(container, dict):
        for k, v in container.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    return out


def test_metadata(tmp_path):
    model, _, path = saved(tmp_path, "protenix")
    config = FactorConfig(rank=4, width=16, depth=1)
    report = fb.patch_model(model, mode={"lowrank": [1], "exact": ...}, factor_config=config)
    meta = make_metadata("protenix", report, config, path)
    assert meta["host"] == "protenix" and meta["host_version"] == importlib.metadata.version("protenix")
    assert meta["pairformer_fb_version"] == fb.__version__
    modules = meta["modules"]
    assert modules["pairformer_stack.blocks.1.tri_att_start"] == {
        "mode": "lowrank",
        "rank": 4,
        "kind": "triangle",
        "stack": "pairformer",
        "block": 1,
    }
    assert modules["pairformer_stack.blocks.0.attention_pair_bias"] == {
        "mode": "exact",
        "rank": None,
        "kind": "single",
        "stack": "pairformer",
        "block": 0,
    }
    assert meta["model_prefix"] == ""
    assert len(meta["modules"]) == len(report) == 6
    assert meta["factor_config"] == dataclasses.asdict(config)
    created = datetime.datetime.fromisoformat(meta["created_utc"])
    assert (
        created.tzinfo is not None and abs(datetime.datetime.now(datetime.timezone.utc) - created).total_seconds() < 60
    )
    assert meta["source"] == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    # plain data: a converted checkpoint still loads with weights_only=True
    out = write_checkpoint_atomic({"model": model.state_dict(), "pairformer_fb": meta}, tmp_path / "c.pt")
    assert torch.load(out, weights_only=True)["pairformer_fb"] == meta
    with pytest.raises(ValueError, match="PatchReport is of host 'protenix'"):
        make_metadata("boltz", report, config, path)
    with pytest.raises(FileNotFoundError):
        make_metadata("protenix", report, config, tmp_path / "missing.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_bad_inputs_name_what_is_wrong(tmp_path):
    model, sd, path = saved(tmp_path, "protenix")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        read_checkpoint(tmp_path)
    data = path.read_bytes()
    half = tmp_path / "half.pt"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="half.pt: not a readable torch checkpoint .truncated or corrupt"):
        read_checkpoint(half)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt: empty file"):
        read_checkpoint(tmp_path / "empty.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(junk)
    cases = {
        "nosd.pt": ({"step": 3, "config": {"a": 1}}, "found no state dict.*'config', 'step'"),
        "other.pt": (
            {"model": {"encoder.weight": torch.ones(2)}},
            "no Pairformer keys of a known host.*encoder.weight",
        ),
        "bare.pt": (model.pairformer_stack.state_dict(), "no Pairformer keys.*pass host="),
        "mixed.pt": ({**sd, "pairformer_module.layers.0.attention.proj_q.weight": torch.ones(2)}, "several hosts"),
    }
    for name, (container, message) in cases.items():
        torch.save(container, tmp_path / name)
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint(tmp_path / name)
    # a bare stack's state dict is read with host=
    bare = read_checkpoint(tmp_path / "bare.pt", host="protenix")
    assert bare.host == "protenix" and bare.location == ()
    with pytest.raises(CheckpointError, match="host='boltz' but the checkpoint's keys are 'protenix'"):
        read_checkpoint(path, host="boltz")
    with pytest.raises(ValueError, match="unknown host 'af3'"):
        read_checkpoint(path, host="af3")
