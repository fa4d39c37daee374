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

import copy
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

    from pairformer_fb.tools.presets import protenix_configs

    PROTENIX_SKIP = None
except Exception as e:  # noqa: BLE001 - any import failure means: no usable host here
    PROTENIX_SKIP = (f"protenix cannot be imported ({type(e).__name__}: {e}); install it with "
                     "pip install --no-deps protenix==2.0.0 -r requirements-hosts.txt")

try:
    from openfold3.core.data.resources.residues import STANDARD_PROTEIN_RESIDUES_3, STANDARD_RESIDUES_WITH_GAP_3
    from openfold3.core.data.resources.token_atom_constants import TOKEN_NAME_TO_ATOM_NAMES
    from openfold3.projects.of3_all_atom.config.model_config import model_config as of3_model_config
    from openfold3.projects.of3_all_atom.model import OpenFold3

    OPENFOLD3_SKIP = None
except Exception as e:  # noqa: BLE001
    OPENFOLD3_SKIP = (f"openfold3 cannot be imported ({type(e).__name__}: {e}); install it with "
                      "pip install --no-deps openfold3==0.5.0 gemmi ml-collections absl-py biotite")

from host_models import randomise_
from naive import rel_err
import pairformer_fb as fb
from pairformer_fb.tools.patching import patched_modules

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
    """OpenFold3's default model config, shrunk (the config's FieldReferences propagate the
    shared widths; deepcopy leaves the package's module-level config untouched)."""
    c = copy.deepcopy(of3_model_config)
    a = c.architecture
    a.shared.c_s = 32
    a.shared.c_z = 16
    a.input_embedder.atom_attn_enc.c_token = 32  # c_token_embedder; c_s_input = it + 65
    a.input_embedder.atom_attn_enc.c_atom = 16
    a.input_embedder.atom_attn_enc.c_atom_pair = 8
    a.diffusion_module.diffusion_module.c_token = 32  # c_token_diffusion
    a.msa.msa_module.c_m = 8
    a.template.c_t = 8
    a.shared.num_recycles = 1
    a.shared.diffusion.no_full_rollout_steps = 2
    a.shared.diffusion.no_full_rollout_samples = 1
    for enc in (a.input_embedder.atom_attn_enc, a.diffusion_module.atom_attn_enc, a.diffusion_module.atom_attn_dec):
        enc.c_hidden, enc.no_heads, enc.no_blocks = 8, 2, 1
    for p, n_blocks in ((a.pairformer, 2), (a.heads.pairformer_embedding.pairformer, 1)):
        p.no_blocks, p.c_hidden_pair_bias, p.no_heads_pair_bias = n_blocks, 8, 4
        p.c_hidden_mul, p.c_hidden_pair_att, p.no_heads_pair = 16, 8, 2
    m = a.msa.msa_module
    m.no_blocks, m.c_hidden_msa_att, m.no_heads_msa, m.c_hidden_opm = 1, 4, 2, 4
    m.c_hidden_mul, m.c_hidden_pair_att, m.no_heads_pair = 16, 8, 2
    t = a.template.template_pair_stack
    t.no_blocks, t.c_hidden_tri_att, t.c_hidden_tri_mul, t.no_heads = 1, 4, 8, 2
    d = a.diffusion_module.diffusion_transformer
    d.no_blocks, d.no_heads, d.c_hidden = 1, 2, 16
    c.settings.memory.eval.use_triton_triangle_kernels = False  # the host's torch path on CPU
    return c


def of3_features(n_token=10, n_msa=4, n_templ=2, seed=0):
    """A batch of one protein chain, the features of ``openfold3.tests.utils.data_utils.
    random_of3_features`` (which ships with openfold3 but imports biotite's PDBx reader and hence
    msgpack, not installed here), with real per-residue atom counts, seeded, no ground truth."""
    g = torch.Generator().manual_seed(seed)

    def oh(idx, k):
        return nn.functional.one_hot(idx, k)

    names = [STANDARD_PROTEIN_RESIDUES_3[i % len(STANDARD_PROTEIN_RESIDUES_3)] for i in range(n_token)]
    restype = torch.tensor([STANDARD_RESIDUES_WITH_GAP_3.index(n) for n in names])
    n_atoms = torch.tensor([len(TOKEN_NAME_TO_ATOM_NAMES[n]) for n in names])
    n_atom = int(n_atoms.sum())
    atom_to_token = torch.repeat_interleave(torch.arange(n_token), n_atoms).int()
    start = torch.cat([torch.zeros(1, dtype=torch.long), n_atoms.cumsum(0)[:-1]]).int()
    f = {
        "residue_index": torch.arange(n_token).int(), "token_index": torch.arange(n_token).int(),
        "asym_id": torch.ones(n_token).int(), "entity_id": torch.ones(n_token).int(),
        "sym_id": torch.ones(n_token).int(), "restype": oh(restype, len(STANDARD_RESIDUES_WITH_GAP_3)).int(),
        "is_protein": torch.ones(n_token).int(), "is_dna": torch.zeros(n_token).int(),
        "is_rna": torch.zeros(n_token).int(), "is_ligand": torch.zeros(n_token).int(),
        "is_atomized": torch.zeros(n_token).int(),
        "ref_pos": torch.randn(n_atom, 3, generator=g), "ref_mask": torch.ones(n_atom).int(),
        "ref_element": oh(torch.randint(0, 119, (n_atom,), generator=g), 119).int(),
        "ref_charge": torch.zeros(n_atom),
        "ref_atom_name_chars": oh(torch.randint(0, 64, (n_atom, 4), generator=g), 64).int(),
        "ref_space_uid": atom_to_token.clone(),
        "msa": oh(torch.randint(0, 32, (n_msa, n_token), generator=g), 32).int(),
        "has_deletion": torch.zeros(n_msa, n_token), "deletion_value": torch.zeros(n_msa, n_token),
        "profile": torch.softmax(torch.randn(n_token, 32, generator=g), -1), "deletion_mean": torch.zeros(n_token),
        "template_restype": oh(torch.randint(0, 32, (n_templ, n_token), generator=g), 32).int(),
        "template_pseudo_beta_mask": torch.ones(n_templ, n_token),
        "template_backbone_frame_mask": torch.ones(n_templ, n_token),
        "template_distogram": oh(torch.randint(0, 39, (n_templ, n_token, n_token), generator=g), 39).float(),
        "template_unit_vector": nn.functional.normalize(torch.randn(n_templ, n_token, n_token, 3, generator=g), dim=-1),
        "token_bonds": torch.zeros(n_token, n_token).int(),
        "token_mask": torch.ones(n_token), "atom_mask": torch.ones(n_atom),
        "cyclic_mask": torch.zeros(n_token, dtype=torch.bool),
        "start_atom_index": start, "num_atoms_per_token": n_atoms.int(), "atom_to_token_index": atom_to_token,
        "msa_mask": torch.ones(n_msa, n_token), "num_paired_seqs": torch.tensor(1),
    }
    return {k: v.unsqueeze(0) for k, v in f.items()}


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


def protenix_features(n_token=10, atoms_per_token=5, n_msa=3, seed=0):
    """Synthetic, unbatched features of one protein chain: the keys Protenix's inference path
    reads (``Protenix.forward`` adds relp / d_lm / v_lm / pad_info itself)."""
    g = torch.Generator().manual_seed(seed)

    def oh(idx, k):
        return nn.functional.one_hot(idx, k).float()

    n_atom = n_token * atoms_per_token
    atom_to_token = torch.arange(n_token).repeat_interleave(atoms_per_token)
    rep_atom = (torch.arange(n_atom) % atoms_per_token == 1).float()  # "CA"
    return {
        "residue_index": torch.arange(n_token), "token_index": torch.arange(n_token),
        "asym_id": torch.zeros(n_token, dtype=torch.long), "entity_id": torch.zeros(n_token, dtype=torch.long),
        "sym_id": torch.zeros(n_token, dtype=torch.long),
        "restype": oh(torch.randint(0, 20, (n_token,), generator=g), 32),
        "profile": torch.softmax(torch.randn(n_token, 32, generator=g), -1), "deletion_mean": torch.zeros(n_token),
        "msa": torch.randint(0, 20, (n_msa, n_token), generator=g),
        "has_deletion": torch.zeros(n_msa, n_token), "deletion_value": torch.zeros(n_msa, n_token),
        "prot_pair_num_alignments": torch.tensor(0), "prot_unpair_num_alignments": torch.tensor(n_msa),
        "rna_pair_num_alignments": torch.tensor(0), "rna_unpair_num_alignments": torch.tensor(0),
        "token_bonds": torch.zeros(n_token, n_token), "has_frame": torch.ones(n_token, dtype=torch.long),
        "ref_pos": torch.randn(n_atom, 3, generator=g), "ref_mask": torch.ones(n_atom),
        "ref_element": oh(torch.randint(0, 10, (n_atom,), generator=g), 128), "ref_charge": torch.zeros(n_atom),
        "ref_atom_name_chars": oh(torch.randint(0, 64, (n_atom, 4), generator=g), 64),
        "ref_space_uid": atom_to_token.clone(), "atom_to_token_idx": atom_to_token,
        "atom_to_tokatom_idx": torch.arange(atoms_per_token).repeat(n_token),
        "is_protein": torch.ones(n_atom), "is_rna": torch.zeros(n_atom), "is_dna": torch.zeros(n_atom),
        "is_ligand": torch.zeros(n_atom), "distogram_rep_atom_mask": rep_atom, "pae_rep_atom_mask": rep_atom,
        "plddt_m_rep_atom_mask": rep_atom, "mol_id": torch.zeros(n_atom, dtype=torch.long),
        "entity_mol_id": torch.zeros(n_atom, dtype=torch.long), "mol_atom_index": torch.arange(n_atom),
    }


@pytest.mark.skipif(PROTENIX_SKIP is not None, reason=PROTENIX_SKIP or "")
def test_protenix_full_model_exact_and_lowrank():
    configs = protenix_tiny_configs()
    assert (configs.c_s, configs.c_z, configs.model.pairformer.n_blocks,
            configs.sample_diffusion.N_step) == (64, 32, 2, 2)
    torch.manual_seed(0)
    model = randomise_(Protenix(configs)).eval()
    feats = protenix_features()
    trunk = {}  # the trunk's (s, z): Protenix's inference output holds neither
    model.pairformer_stack.register_forward_hook(
        lambda mod, args, out: trunk.update(s=out[0].clone(), z=out[1].clone()))

    def run(m):
        seed_all(0)
        with torch.no_grad():
            pred, _, _ = m({k: v.clone() for k, v in feats.items()}, None, None, mode="inference")
        out = {k: v for k, v in pred.items() if torch.is_tensor(v)}
        out.update(trunk_s=trunk["s"], trunk_z=trunk["z"])
        return out

    out = run(model)
    assert out["trunk_z"].shape == (10, 10, 32) and out["coordinate"].shape == (1, 50, 3)
    assert {"contact_probs", "plddt", "pae", "pde", "resolved"} <= out.keys()
    # v1.0.0's template embedder has 2 blocks (the bare base configs have none)
    stacks = ("pairformer", "msa", "template", "confidence")
    check_exact_then_lowrank(model, run, stacks, expected_stacks=stacks)
