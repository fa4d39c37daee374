"""patch_model / unpatch_model on tiny *full* host models, run end to end (CPU, fp32).

A tiny full Protenix model (``protenix.model.protenix.Protenix``) and a tiny full OpenFold3
model (``openfold3.projects.of3_all_atom.model.OpenFold3``) are built from their packages'
default configs with small widths, few blocks (OpenFold3: 2 trunk cycles; Protenix: N_cycle 1),
two diffusion steps and one sample, on random input features. Every parameter is re-randomised
(the hosts zero-initialise their output projections and gates). Each model runs in eval mode
under ``torch.no_grad`` with every RNG (torch, numpy, random) re-seeded identically before each
run, so that the diffusion noise and the MSA sampling are the same from run to run:

* exact mode, every Pairformer-like stack of the host patched (trunk, MSA module, template
  stack where the config has one, confidence head): every output tensor (trunk single / pair
  representations, coordinates, distogram / confidence logits) matches the unpatched model's
  within 1e-4 relative (observed ~1e-7), and after ``unpatch_model`` the outputs are
  bit-identical to the first run;
* lowrank mode (rank 4, untrained factor networks): the model runs end to end and gives finite
  outputs of the same shapes (different values, since the factors approximate nothing yet);
  unpatching restores bit-identical outputs.

Each host is skipped, with the import error as the reason, if its package cannot be imported.
"""

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

# without CUDA, importing protenix would try to build its fused CUDA layer norm
os.environ.setdefault("LAYERNORM_TYPE", "torch")

try:
    from protenix.model.protenix import Protenix

    from pairformer_fb.hosts.protenix.presets import protenix_configs

    PROTENIX_SKIP = None
except Exception as e:  # noqa: BLE001 - any import failure means: no usable host here
    PROTENIX_SKIP = (
        f"protenix cannot be imported ({type(e).__name__}: {e}); install it with "
        "pip install --no-deps protenix==2.0.0 -r requirements-hosts.txt"
    )

try:
    from openfold3.projects.of3_all_atom.model import OpenFold3

    from pairformer_fb.hosts.openfold3.featurize import synthetic_features
    from pairformer_fb.hosts.openfold3.presets import openfold3_config

    OPENFOLD3_SKIP = None
except Exception as e:  # noqa: BLE001
    OPENFOLD3_SKIP = (
        f"openfold3 cannot be imported ({type(e).__name__}: {e}); install it with "
        "pip install --no-deps openfold3==0.5.0 gemmi ml-collections absl-py biotite"
    )

from host_models import randomise_
from naive import rel_err

import pairformer_fb as fb
from pairformer_fb.hosts.protenix.featurize import sequence_features
from pairformer_fb.patching.patching import patched_modules

EXACT_RTOL = 1e-4
LOWRANK_RANK = 4

pytestmark = [
    # the hosts enter torch.amp.autocast("cuda") / CPU autocast with fp32 unconditionally
    pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning"),
    pytest.mark.filterwarnings("ignore:In CPU autocast, but the target dtype is not supported:UserWarning"),
]


def seed_all(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def check_exact_then_lowrank(model: nn.Module, run, stacks, expected_stacks) -> None:
    """The common body: reference run, exact patch, unpatch, lowrank patch, unpatch."""
    ref = run(model)
    assert ref and all(torch.isfinite(v).all() for v in ref.values())
    again = run(model)  # the runs are deterministic (re-seeded)
    assert all(torch.equal(again[k], v) for k, v in ref.items())

    report = fb.patch_model(model, mode="exact", stacks=stacks)
    assert report.params_added == 0 and {e.stack for e in report.entries} == set(expected_stacks)
    assert {e.kind for e in report.entries} == {"triangle", "single"}
    out = run(model)
    assert out.keys() == ref.keys()
    errs = {k: rel_err(out[k], v) for k, v in ref.items()}
    assert all(e <= EXACT_RTOL for e in errs.values()), errs

    restored = fb.unpatch_model(model)
    assert len(restored) == len(report) and not patched_modules(model)
    back = run(model)
    for k, v in ref.items():
        assert torch.equal(back[k], v), k

    report = fb.patch_model(model, mode="lowrank", rank=LOWRANK_RANK, stacks=stacks)
    assert report.params_added > 0 and all(e.mode == "lowrank" and e.rank == LOWRANK_RANK for e in report.entries)
    low = run(model)
    assert low.keys() == ref.keys()
    for k, v in ref.items():
        assert low[k].shape == v.shape and low[k].dtype == v.dtype, k
        assert torch.isfinite(low[k]).all(), k
    trunk_pair = next(k for k in ref if "z" in k and "trunk" in k)
    assert rel_err(low[trunk_pair], ref[trunk_pair]) > 1e-3  # the factor networks are really used
    fb.unpatch_model(model)
    back = run(model)
    for k, v in ref.items():
        assert torch.equal(back[k], v), k


# ---------------------------------------------------------------------------------------------
# OpenFold3


def of3_tiny_config():
    """OpenFold3's ``tiny`` preset (``pairformer_fb.hosts.openfold3.presets.openfold3_config``)."""
    return openfold3_config("tiny")


def of3_features(n_token=10, seed=0):
    """A batch of one protein chain (``pairformer_fb.hosts.openfold3.featurize.synthetic_features``)."""
    return synthetic_features("MKTAYIAKQRQISFVKSHFSRQ"[:n_token], seed=seed)


@pytest.mark.skipif(OPENFOLD3_SKIP is not None, reason=OPENFOLD3_SKIP or "")
def test_openfold3_full_model_exact_and_lowrank():
    torch.manual_seed(0)
    model = randomise_(OpenFold3(of3_tiny_config())).eval()
    batch = of3_features()

    def run(m):
        seed_all(0)
        with torch.no_grad():
            _, out = m({k: v.clone() for k, v in batch.items()})
        return {k: v for k, v in out.items() if torch.is_tensor(v)}

    out = run(model)
    n_atom = int(batch["num_atoms_per_token"].sum())
    assert out["zij_trunk"].shape == (1, 1, 10, 10, 16) and out["atom_positions_predicted"].shape == (1, 1, n_atom, 3)
    assert {"distogram_logits", "plddt_logits", "pae_logits", "pde_logits"} <= out.keys()
    stacks = ("pairformer", "msa", "template", "confidence")
    check_exact_then_lowrank(model, run, stacks, expected_stacks=stacks)


# ---------------------------------------------------------------------------------------------
# Protenix


def protenix_tiny_configs():
    """The ``tiny`` preset (issue 5's settings) with the CPU switches (fp32, torch kernels)."""
    return protenix_configs("tiny", cpu=True)


def protenix_features(n_token=10, seed=0):
    """Unbatched features of one protein chain (``pairformer_fb.hosts.protenix.featurize.sequence_features``:
    real tokens and CCD atoms)."""
    return sequence_features("MKTAYIAKQRQISFVKSHFSRQ"[:n_token], seed=seed)


@pytest.mark.skipif(PROTENIX_SKIP is not None, reason=PROTENIX_SKIP or "")
def test_protenix_full_model_exact_and_lowrank():
    configs = protenix_tiny_configs()
    assert (configs.c_s, configs.c_z, configs.model.pairformer.n_blocks, configs.sample_diffusion.N_step) == (
        64,
        32,
        2,
        2,
    )
    torch.manual_seed(0)
    model = randomise_(Protenix(configs)).eval()
    feats = protenix_features()
    trunk = {}  # the trunk's (s, z): Protenix's inference output holds neither
    model.pairformer_stack.register_forward_hook(
        lambda mod, args, out: trunk.update(s=out[0].clone(), z=out[1].clone())
    )

    def run(m):
        seed_all(0)
        with torch.no_grad():
            pred, _, _ = m({k: v.clone() for k, v in feats.items()}, None, None, mode="inference")
        out = {k: v for k, v in pred.items() if torch.is_tensor(v)}
        out.update(trunk_s=trunk["s"], trunk_z=trunk["z"])
        return out

    out = run(model)
    n_atom = feats["ref_pos"].shape[0]  # the sequence's real heavy atoms (CCD)
    assert n_atom > 50 and out["trunk_z"].shape == (10, 10, 32) and out["coordinate"].shape == (1, n_atom, 3)
    assert {"contact_probs", "plddt", "pae", "pde", "resolved"} <= out.keys()
    # v1.0.0's template embedder has 2 blocks (the bare base configs have none)
    stacks = ("pairformer", "msa", "template", "confidence")
    check_exact_then_lowrank(model, run, stacks, expected_stacks=stacks)
