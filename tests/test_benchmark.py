"""The structure benchmark (data/featurize.py, hosts/<host>/featurize.py, data/structure.py, bench/structure.py,
scripts/benchmark.py) on a CPU:

* featurisation of the samples against Protenix's expectations: one token per residue with
  Protenix's residue classes, the heavy atoms of biotite's CCD per residue (OXT only at the C
  terminus, as Protenix removes leaving atoms; the counts also checked against Protenix's own
  RES_ATOMS_DICT), the encodings decoded back, the reference conformers rigid copies of the CCD
  ideal coordinates, one representative atom per token, chain / entity / copy ids of a complex,
  an A3M's rows and deletions; and a tiny Protenix runs end to end on the features;
* the structure writer round-trips through biopython's parsers (mmCIF and PDB);
* the metrics: identical and rigidly moved structures give RMSD 0, lDDT 1, TM 1; on perturbed
  structures biotite's RMSD / fixed-correspondence TM-score agree with tmtools' TM-align, and
  biotite's lDDT with a float64 formula;
* bad inputs fail with a clear error before any model is built;
* one end-to-end run of the Hydra script (tiny Protenix, 1CRN, the three variants, a reference):
  the schema of results.json, the files, and that exact agrees with the original while the
  untrained lowrank factors do not;
* the same for host=openfold3 and host=boltz (their features checked against the hosts' own
  atom lists and encodings), and with a host checkpoint the written structure is the prediction
  of that model run by hand; host=boltz without its extra packages names each missing one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("LAYERNORM_TYPE", "torch")

ROOT = Path(__file__).resolve().parents[1]

try:
    import protenix  # noqa: F401
    from protenix.data.constants import (
        RES_ATOMS_DICT,
        STD_RESIDUES_WITH_GAP,
        get_all_elems,
    )

    PROTENIX_SKIP = None
except Exception as e:  # noqa: BLE001
    PROTENIX_SKIP = f"protenix cannot be imported ({type(e).__name__}: {e})"

from pairformer_fb.data import structure as S
from pairformer_fb.data.featurize import (
    InputError,
    build_atoms,
    protein_1to3,
    read_samples,
)
from pairformer_fb.hosts.protenix.featurize import protenix_features

needs_protenix = pytest.mark.skipif(PROTENIX_SKIP is not None, reason=PROTENIX_SKIP or "")
pytestmark = [
    pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning"),
    pytest.mark.filterwarnings("ignore:In CPU autocast, but the target dtype is not supported:UserWarning"),
]

CRN = "TTCCPSIVARSNFNVCRLPGTPEAICATYTGCIIIPGATCPGDYAN"


@pytest.fixture(scope="module")
def crn():
    return read_samples(["1crn"])[0]


@pytest.fixture(scope="module")
def crn_features(crn):
    return protenix_features(crn, seed=3)


# ---------------------------------------------------------------------------------------------
# featurisation


@needs_protenix
def test_features_1crn_tokens_and_atoms(crn, crn_features):
    f, atoms = crn_features
    assert crn.chains[0].sequence == CRN and crn.n_tokens == 46
    n_tok, n_atom = 46, atoms.array_length()
    three = [protein_1to3()[c] for c in CRN]
    # atoms per residue: biotite's CCD heavy atoms without OXT, OXT on the last residue only ...
    import biotite.structure.info as info

    expect = []
    for i, r in enumerate(three):
        res = info.residue(r)
        names = [n for n, e in zip(res.atom_name, res.element) if e != "H" and (n != "OXT" or i == n_tok - 1)]
        expect.append(names)
    assert [str(n) for n in atoms.atom_name] == sum(expect, [])
    # ... which is also Protenix's own per-residue atom list (it holds OXT)
    assert [len(e) for e in expect] == [len(RES_ATOMS_DICT[r]) - (i != n_tok - 1) for i, r in enumerate(three)]
    assert n_atom == sum(len(e) for e in expect)

    assert f["restype"].shape == (n_tok, 32) and f["ref_pos"].shape == (n_atom, 3)
    assert f["restype"].argmax(-1).tolist() == [STD_RESIDUES_WITH_GAP[r] for r in three]
    assert f["restype"].sum(-1).eq(1).all()
    assert f["residue_index"].tolist() == list(range(1, n_tok + 1))
    assert f["token_index"].tolist() == list(range(n_tok))
    for k in ("asym_id", "entity_id", "sym_id"):
        assert f[k].eq(0).all(), k
    counts = torch.bincount(f["atom_to_token_idx"], minlength=n_tok)
    assert counts.tolist() == [len(e) for e in expect]
    assert torch.equal(f["ref_space_uid"], f["atom_to_token_idx"])
    # atom position in Protenix's RES_ATOMS_DICT
    tok = f["atom_to_token_idx"].tolist()
    assert f["atom_to_tokatom_idx"].tolist() == [RES_ATOMS_DICT[three[t]][str(n)] for t, n in zip(tok, atoms.atom_name)]

    # encodings decode back: atom names (ord(c) - 32, 4 chars) and elements (Protenix's 128 list)
    assert f["ref_atom_name_chars"].shape == (n_atom, 4, 64)
    names = ["".join(chr(int(i) + 32) for i in row).rstrip() for row in f["ref_atom_name_chars"].argmax(-1)]
    assert names == [str(n) for n in atoms.atom_name]
    assert f["ref_element"].shape == (n_atom, 128) and f["ref_element"].sum(-1).eq(1).all()
    elems = get_all_elems()
    assert [elems[i] for i in f["ref_element"].argmax(-1)] == [str(e).upper() for e in atoms.element]

    # one representative atom per token: CA (pae, plddt), CB / glycine CA (distogram)
    for k, want in (
        ("pae_rep_atom_mask", ["CA"] * n_tok),
        ("plddt_m_rep_atom_mask", ["CA"] * n_tok),
        ("distogram_rep_atom_mask", ["CA" if r == "GLY" else "CB" for r in three]),
    ):
        m = f[k].bool()
        assert torch.equal(f["atom_to_token_idx"][m], torch.arange(n_tok)), k
        assert [str(n) for n in atoms.atom_name[m.numpy()]] == want, k

    # reference conformers: per residue, a centred rigid copy of the CCD ideal coordinates
    ideal = np.asarray(build_atoms(crn).coord, dtype=np.float64)
    ref = f["ref_pos"].double().numpy()
    for t in (0, 7, 45):
        sel = (f["atom_to_token_idx"] == t).numpy()
        assert np.allclose(ref[sel].mean(0), 0, atol=1e-4)
        d_ref = np.linalg.norm(ref[sel][:, None] - ref[sel][None], axis=-1)
        d_ideal = np.linalg.norm(ideal[sel][:, None] - ideal[sel][None], axis=-1)
        assert np.allclose(d_ref, d_ideal, atol=1e-4)
        assert not np.allclose(ref[sel], ideal[sel] - ideal[sel].mean(0), atol=1e-2)  # rotated
    # single-sequence MSA: the query alone
    assert torch.equal(f["msa"], f["restype"].argmax(-1)[None])
    assert torch.equal(f["profile"], f["restype"]) and f["has_deletion"].eq(0).all()
    # the synthetic features of the full-model test have the same keys (what Protenix reads)
    sys.path.insert(0, str(ROOT / "tests"))
    from test_patch_full_models import protenix_features as synthetic

    assert set(synthetic()) <= set(f)


@needs_protenix
def test_features_complex_ids_and_a3m(tmp_path):
    s = read_samples(["7wux_a2b2"])[0]
    assert [c.chain_id for c in s.chains] == ["A", "B", "C", "D"] and len(s.entities) == 2
    assert s.n_tokens == 1170
    f, atoms = protenix_features(s)
    lens = [len(c.sequence) for c in s.chains]
    chain_of = np.repeat(np.arange(4), lens)
    assert f["asym_id"].tolist() == chain_of.tolist()
    assert f["entity_id"].tolist() == np.repeat([0, 0, 1, 1], lens).tolist()
    assert f["sym_id"].tolist() == np.repeat([0, 1, 0, 1], lens).tolist()
    assert f["residue_index"].tolist() == sum([list(range(1, n + 1)) for n in lens], [])
    # OXT once per chain, at its last residue; mol ids per chain
    oxt = np.flatnonzero(np.asarray(atoms.atom_name) == "OXT")
    assert len(oxt) == 4 and np.array_equal(f["atom_to_token_idx"][oxt].numpy(), np.cumsum(lens) - 1)
    assert torch.equal(f["mol_id"], f["asym_id"][f["atom_to_token_idx"]])
    assert torch.equal(f["entity_mol_id"], f["entity_id"][f["atom_to_token_idx"]])

    # an A3M for 1crn: a duplicate row is dropped, lower case counts as deletions, '-' is a gap
    (tmp_path / "1crn.a3m").write_text(f">query\n{CRN}\n>hit1\n{CRN[:5]}kk{CRN[5:10]}-{CRN[11:]}\n>dup\n{CRN}\n")
    crn = read_samples(["1crn"])[0]
    f, _ = protenix_features(crn, msa_dir=tmp_path)
    assert f["msa"].shape == (2, 46)
    assert f["msa"][1, 10] == STD_RESIDUES_WITH_GAP["-"]
    assert f["has_deletion"][1].nonzero().flatten().tolist() == [5]
    assert torch.allclose(f["deletion_value"][1, 5], torch.tensor(np.arctan(2 / 3) * 2 / np.pi, dtype=torch.float32))
    assert torch.allclose(f["profile"][10, STD_RESIDUES_WITH_GAP["-"]], torch.tensor(0.5))
    assert f["prot_unpair_num_alignments"] == 2
    (tmp_path / "1crn.a3m").write_text(f">query\n{CRN}\n>bad\n{CRN[:-1]}\n")
    with pytest.raises(InputError, match="aligned columns"):
        protenix_features(crn, msa_dir=tmp_path)


@needs_protenix
def test_tiny_protenix_runs_on_1crn_features(crn_features):
    from pairformer_fb.hosts.presets import randomise_
    from pairformer_fb.hosts.protenix.presets import build_protenix

    f, atoms = crn_features
    model, _ = build_protenix("tiny", cpu=True)
    randomise_(model).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        pred, _, _ = model(dict(f), None, None, mode="inference")
    assert pred["coordinate"].shape == (1, atoms.array_length(), 3)
    assert torch.isfinite(pred["coordinate"]).all()
    assert pred["plddt"].shape[-2] == atoms.array_length()  # per-atom pLDDT logits


# ---------------------------------------------------------------------------------------------
# structure I/O


@pytest.mark.parametrize("suffix", ["cif", "pdb"])
def test_structure_round_trip(tmp_path, suffix):
    from Bio.PDB import MMCIFParser, PDBParser

    s = read_samples([str(ROOT / "data_samples" / "7wux_a2b2.fasta")])[0]
    s.chains = s.chains[:1] + s.chains[2:3]  # two chains, shorter
    s.chains[0].sequence, s.chains[1].sequence = "MKTGW", "GAPCY"
    atoms = build_atoms(s)
    xyz = np.random.default_rng(0).normal(size=(atoms.array_length(), 3)) * 20
    path = S.write_structure(tmp_path / f"x.{suffix}", atoms, xyz)
    parser = MMCIFParser(QUIET=True) if suffix == "cif" else PDBParser(QUIET=True)
    back = list(parser.get_structure("x", str(path)).get_atoms())
    assert len(back) == atoms.array_length()
    assert [a.get_id() for a in back] == [str(n) for n in atoms.atom_name]
    assert [a.get_parent().get_resname() for a in back] == [str(n) for n in atoms.res_name]
    assert [a.get_parent().get_parent().id for a in back] == [str(c) for c in atoms.chain_id]
    assert [a.get_parent().id[1] for a in back] == atoms.res_id.tolist()
    assert [a.element for a in back] == [str(e).upper() for e in atoms.element]
    assert np.abs(np.array([a.coord for a in back]) - xyz).max() < 1e-3
    ca, seq = S.read_ca(path)
    assert seq == "MKTGWGAPCY" and np.abs(ca - S.ca_coords(atoms, xyz)).max() < 1e-3


def test_structure_writer_bad_input(tmp_path, crn):
    atoms = build_atoms(crn)
    with pytest.raises(S.StructureError, match="suffix"):
        S.write_structure(tmp_path / "x.xyz", atoms)
    with pytest.raises(S.StructureError, match=r"shape \[327, 3\]"):
        S.write_structure(tmp_path / "x.cif", atoms, np.zeros((3, 3)))
    with pytest.raises(S.StructureError, match="does not exist"):
        S.read_ca(tmp_path / "missing.pdb")


# ---------------------------------------------------------------------------------------------
# metrics


EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


def rmsd_floor(*xyz):
    """Bound on the RMSD (structure.ca_rmsd, float64 Kabsch) of a structure with itself or with a
    rigid motion of it: centring, the 3x3 SVD (backward stable: the rotation is a few eps64 off)
    and applying the rotation each add a few float64 roundings of the coordinates' magnitude;
    64 * eps64 * max|x| covers them (3000 random structures of 1-1e4 Å: <= 9 * eps64 * max|x|).
    It holds on any machine: pure float64 arithmetic on the same numbers. (biotite's float32 fit
    had ~0.4 * eps32 * max|x| here: 1.05e-4 Å at the 2187 Å of random-weight tiny Protenix.)"""
    return 64 * EPS64 * max(np.abs(x).max() for x in xyz)


def fp32_rmsd_bound(*xyz):
    """Bound on the RMSD of two predictions that agree to float32 resolution, i.e. each
    coordinate within one float32 spacing (<= eps32 * max|x|) of the other's: the optimal
    superposition's RMSD is at most the RMSD without moving (the identity is a candidate), which
    is at most sqrt(3) * eps32 * max|x| (three coordinates per atom); plus the metric's own
    float64 rounding. Scales with the coordinates, unlike a fixed Å tolerance: random-weight
    structures reach thousands of Å."""
    return np.sqrt(3) * EPS32 * max(np.abs(x).max() for x in xyz) + rmsd_floor(*xyz)


def lddt_float64(ref, sub, radius=15.0, thresholds=(0.5, 1.0, 2.0, 4.0)):
    """AF2/AF3 lDDT over all pairs i != j within ``radius`` in the reference, float64."""
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    d_sub = np.linalg.norm(sub[:, None] - sub[None], axis=-1)
    pairs = (d_ref < radius) & ~np.eye(len(ref), dtype=bool)
    diff = np.abs(d_ref - d_sub)[pairs]
    return float(np.mean([(diff < t).mean() for t in thresholds]))


def compact_chain(n, seed):
    """A random chain with 3.8 Å steps and compact folding (many pairs within 15 Å)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n, 3))
    steps = 3.8 * steps / np.linalg.norm(steps, axis=-1, keepdims=True)
    return np.cumsum(steps, 0)


def test_metrics_identity_and_rigid_motion():
    from scipy.spatial.transform import Rotation

    x = compact_chain(60, 0)
    moved = x @ Rotation.random(random_state=1).as_matrix().T + np.array([10.0, -4.0, 7.0])
    for sub in (x, moved):
        for method in S.TM_METHODS:
            a = S.agreement(x, sub, tm_method=method)
            assert a["rmsd"] <= rmsd_floor(x, sub) and abs(a["lddt"] - 1) < 1e-6 and abs(a["tm_score"] - 1) < 1e-4, a
    # far from the origin, as random-weight structures are (~2000 Å): the float64 fit has no float32
    # floor (biotite's superimpose, float32, gave ~1e-4 Å for a structure against itself here)
    far = (x * 30 + np.array([2000.0, -1500.0, 800.0])).astype(np.float32).astype(np.float64)
    far_moved = far @ Rotation.random(random_state=2).as_matrix().T + np.array([-300.0, 50.0, 900.0])
    for sub in (far, far_moved):
        assert S.ca_rmsd(far, sub) <= rmsd_floor(far, sub) < 1e-9


def test_metrics_perturbed_agree_between_implementations():
    import tmtools

    x = compact_chain(80, 2)
    rng = np.random.default_rng(3)
    for sigma in (0.3, 1.0):
        y = x + rng.normal(size=x.shape) * sigma
        a = S.agreement(x, y)
        tm = tmtools.tm_align(y, x, "A" * 80, "A" * 80)
        # RMSD: the float64 Kabsch fit against TM-align's (all residues aligned at this noise)
        assert abs(a["rmsd"] - tm.rmsd) < 2e-3 * max(1.0, a["rmsd"]), (a, tm.rmsd)
        # TM-score: the fixed correspondence after the RMSD fit is a lower bound, close to TM-align's
        assert a["tm_score"] <= tm.tm_norm_chain2 + 1e-4
        assert abs(a["tm_score"] - tm.tm_norm_chain2) < 1e-2, (a, tm.tm_norm_chain2)
        # lDDT: biotite against the float64 formula
        assert abs(a["lddt"] - lddt_float64(x, y)) < 1e-5
        assert 0.2 < a["lddt"] < 1 and 0.2 < a["tm_score"] < 1
    far = np.arange(10)[:, None] * np.array([[20.0, 0, 0]])  # no pair within 15 Å
    assert S.agreement(far, far)["lddt"] is None and "15 Å" in S.agreement(far, far)["lddt_note"]


def test_match_to_reference():
    pi, ri = S.match_to_reference("MKTAYIAKQR", "KTAYIAKQRGG")
    assert pi.tolist() == list(range(1, 10)) and ri.tolist() == list(range(9))


# ---------------------------------------------------------------------------------------------
# bad inputs: clear errors before any model work


def test_bad_samples(tmp_path):
    (tmp_path / "bad.fasta").write_text(">x\nMKTBZ\n")
    with pytest.raises(InputError, match=r"unknown residue letter 'B' at position 4"):
        read_samples([str(tmp_path / "bad.fasta")])
    (tmp_path / "empty.fasta").write_text(">x\n\n")
    with pytest.raises(InputError, match="empty sequence"):
        read_samples([str(tmp_path / "empty.fasta")])
    (tmp_path / "none.fasta").write_text("MKT\n")
    with pytest.raises(InputError, match="not a readable FASTA file|no FASTA records"):
        read_samples([str(tmp_path / "none.fasta")])
    with pytest.raises(InputError, match="does not exist"):
        read_samples([str(tmp_path / "missing.fasta")])
    with pytest.raises(InputError, match="sample 'nosuch'.*known samples: 1crn, 1ubq"):
        read_samples(["nosuch"])
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="holds no FASTA files"):
        read_samples([str(tmp_path / "folder")])
    (tmp_path / "folder" / "a.fasta").write_text(">a\nMKT\n>b\nGG\n")
    (s,) = read_samples([str(tmp_path / "folder")])
    assert s.name == "a" and [c.sequence for c in s.chains] == ["MKT", "GG"]


def bench_cfg(tmp_path, **kw):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "configs" / "benchmark.yaml")
    cfg.pop("hydra", None)
    cfg.output_dir = str(tmp_path / "out")
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def test_bad_benchmark_inputs_fail_before_model_work(tmp_path, monkeypatch):
    from pairformer_fb.bench import structure as benchmark
    from pairformer_fb.hosts import structure_hosts as hosts

    def no_model(*a, **k):
        raise AssertionError("a model was built or a sample featurised before the inputs were checked")

    for cls in map(hosts.host_class, hosts.HOSTS):
        monkeypatch.setattr(cls, "build", no_model)
        monkeypatch.setattr(cls, "featurise", no_model)
    (tmp_path / "bad.fasta").write_text(">x\nMKTJ\n")
    with pytest.raises(InputError, match="unknown residue letter 'J'"):
        benchmark.run(bench_cfg(tmp_path, samples=["1crn", str(tmp_path / "bad.fasta")]))
    with pytest.raises(FileNotFoundError, match="checkpoint="):
        benchmark.run(bench_cfg(tmp_path, checkpoint=str(tmp_path / "nope.pt")))
    # a checkpoint of another host (Boltz-2's Pairformer keys; OpenFold3's)
    torch.save(
        {"state_dict": {"pairformer_module.layers.0.attention.proj_q.weight": torch.zeros(2, 2)}},
        tmp_path / "boltz.ckpt",
    )
    torch.save(
        {"state_dict": {"pairformer_stack.blocks.0.attn_pair_bias.linear_z.weight": torch.zeros(2, 2)}},
        tmp_path / "of3.ckpt",
    )
    with pytest.raises(ValueError, match="is a boltz checkpoint, but the benchmark runs host=protenix"):
        benchmark.run(bench_cfg(tmp_path, checkpoint=str(tmp_path / "boltz.ckpt")))
    with pytest.raises(ValueError, match="is a boltz checkpoint, but the benchmark runs host=openfold3"):
        benchmark.run(bench_cfg(tmp_path, host="openfold3", checkpoint=str(tmp_path / "boltz.ckpt")))
    with pytest.raises(ValueError, match="is a openfold3 checkpoint, but the benchmark runs host=protenix"):
        benchmark.run(bench_cfg(tmp_path, checkpoint=str(tmp_path / "of3.ckpt")))
    with pytest.raises(ValueError, match="unknown host='alphafold'; known: protenix, openfold3, boltz"):
        benchmark.run(bench_cfg(tmp_path, host="alphafold"))
    with pytest.raises(ValueError, match="model must be auto, tiny or default for host=openfold3"):
        benchmark.run(bench_cfg(tmp_path, host="openfold3", model="base"))
    with pytest.raises(ValueError, match="kernels must be auto or one of torch, triton.*host=openfold3"):
        benchmark.run(bench_cfg(tmp_path, host="openfold3", kernels="triattention"))
    with pytest.raises(ValueError, match="kernels must be one of .*host=protenix, got 'triton'"):
        benchmark.run(bench_cfg(tmp_path, kernels="triton"))
    with pytest.raises(ValueError, match=r"variants: unknown \['fast'\]; expected distinct names from"):
        benchmark.run(bench_cfg(tmp_path, variants=["original", "fast"]))
    with pytest.raises(ValueError, match="diffusion_dtype must be null, bf16 or fp16"):
        benchmark.run(bench_cfg(tmp_path, diffusion_dtype="bfloat16"))
    with pytest.raises(S.StructureError, match="does not exist"):
        benchmark.run(bench_cfg(tmp_path, samples=["1crn"], reference=str(tmp_path / "ref.pdb")))


def test_boltz_host_says_what_is_missing_before_model_work(tmp_path, monkeypatch):
    """host=boltz: full Boltz-2 inference needs packages beyond the adapter's (pytorch_lightning,
    torchmetrics, numba, ...); the error names each missing one with its pinned version, before
    any model work. Boltz's own settings are checked there too."""
    import importlib.util

    from pairformer_fb.bench import structure as benchmark
    from pairformer_fb.hosts import structure_hosts as hosts
    from pairformer_fb.hosts.boltz import structure as boltz_structure

    def no_model(*a, **k):
        raise AssertionError("model work before the host check")

    monkeypatch.setattr(boltz_structure.BoltzHost, "build", no_model)
    monkeypatch.setattr(boltz_structure.BoltzHost, "featurise", no_model)
    real_find_spec = importlib.util.find_spec
    absent = {"pytorch_lightning", "numba"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in absent else real_find_spec(name, *a)
    )
    with pytest.raises(hosts.HostUnavailable) as e:
        benchmark.run(bench_cfg(tmp_path, host="boltz"))
    msg = str(e.value)
    assert "pytorch_lightning (pip install --no-deps pytorch-lightning==2.6.6)" in msg
    assert "numba (pip install --no-deps numba==0.68.0 llvmlite==0.50.0)" in msg
    assert "torchmetrics" not in msg or real_find_spec("torchmetrics") is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert boltz_structure.boltz_missing() == []
    with pytest.raises(ValueError, match="model must be auto, tiny or checkpoint for host=boltz"):
        benchmark.run(bench_cfg(tmp_path, host="boltz", model="base"))
    with pytest.raises(ValueError, match="model=checkpoint .* give checkpoint="):
        benchmark.run(bench_cfg(tmp_path, host="boltz", model="checkpoint"))


# ---------------------------------------------------------------------------------------------
# end to end


@needs_protenix
def test_benchmark_script_end_to_end(tmp_path, crn):
    # a "reference" structure: 1CRN's atoms on a compact random chain, residues 2.. only
    atoms = build_atoms(crn)
    ref_atoms = atoms[atoms.res_id >= 2]
    ref_xyz = np.repeat(compact_chain(45, 5), np.bincount(ref_atoms.res_id)[2:], axis=0)
    S.write_structure(tmp_path / "ref.pdb", ref_atoms, ref_xyz)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark.py"),
        "model=tiny",
        "samples=[1crn]",
        "variants=[original,exact,lowrank]",
        "warmup=0",
        "repeats=2",
        "rank=4",
        f"reference={tmp_path / 'ref.pdb'}",
        f"output_dir={out}",
        "device=cpu",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = json.loads((out / "results.json").read_text())
    assert "RANDOM weights" in result["note"]
    assert result["model"]["preset"] == "tiny" and result["model"]["weights"] == "random"
    recs = result["records"]
    assert [r["variant"] for r in recs] == ["original", "exact", "lowrank"]
    phases = ["input_embedding", "msa_module", "pairformer_trunk", "diffusion_sampling", "confidence_head", "other"]
    for r in recs:
        assert r["status"] == "ok" and r["sample"] == "1crn" and r["n_tokens"] == 46
        assert r["n_atoms"] == atoms.array_length()
        assert list(r["times_s"]) == phases + ["total"]
        assert all(v >= 0 for v in r["times_s"].values())
        assert sum(r["times_s"][p] for p in phases) == pytest.approx(r["times_s"]["total"], rel=1e-6)
        assert r["peak_memory_bytes"] == 0 and r["tokens_per_s"] == pytest.approx(46 / r["times_s"]["total"])
        assert set(r["vs_original"]) >= {"rmsd", "lddt", "tm_score"}
        assert set(r["vs_reference"]) >= {"rmsd", "lddt", "tm_score"} and r["vs_reference"]["n_residues"] == 45
        path = out / r["structure_path"]
        assert path.is_file() and path.suffix == ".cif"
    # written structures carry the prediction; exact agrees with the original, lowrank does not
    ca = {r["variant"]: S.read_ca(out / r["structure_path"])[0] for r in recs}
    assert S.read_ca(out / recs[0]["structure_path"])[1] == CRN
    scale = np.linalg.norm(ca["original"] - ca["original"].mean(0), axis=-1).mean()
    orig, exact, low = (r["vs_original"] for r in recs)
    # the original record compares the original with itself: only the metric's float64 rounding
    assert orig["rmsd"] <= rmsd_floor(ca["original"]) and orig["tm_score"] == pytest.approx(1, abs=1e-6)
    assert exact["rmsd"] < 1e-4 * scale + 1e-3 and exact["tm_score"] > 0.999
    assert low["rmsd"] > 100 * exact["rmsd"] and low["tm_score"] < 0.99
    assert "UNTRAINED" in recs[2]["notes"]["factors"] and recs[2]["notes"]["rank"] == 4
    assert recs[1]["notes"]["patched_modules"] == recs[2]["notes"]["patched_modules"] > 0
    md = (out / "results.md").read_text()
    assert md.count("| 1crn |") == 3 + 3 and "RANDOM weights" in md
    assert (out / "time_vs_tokens.png").stat().st_size > 1000


@needs_protenix
def test_benchmark_loads_host_and_converted_checkpoints(tmp_path, crn):
    """checkpoint= a Protenix checkpoint: the model runs with its weights; a converted one (patched
    lowrank, factor networks + metadata) feeds its factor networks to the lowrank variant: the
    written structure is the one a model patched and loaded by hand predicts."""
    import pairformer_fb as fb
    from pairformer_fb.bench import structure as benchmark
    from pairformer_fb.convert.checkpoint import make_metadata
    from pairformer_fb.hosts.presets import randomise_
    from pairformer_fb.hosts.protenix.presets import build_protenix
    from pairformer_fb.modules import FactorConfig

    model, _ = build_protenix("tiny", cpu=True)
    randomise_(model, seed=11)
    host_path = tmp_path / "protenix.pt"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, host_path)
    stacks = ["pairformer", "msa", "template", "confidence"]
    fc = FactorConfig(rank=4)
    report = fb.patch_model(model, mode="lowrank", factor_config=fc, stacks=stacks)
    randomise_(model, seed=12)  # trained factor networks stand-in (host weights re-randomised too)
    conv_path = tmp_path / "converted.pt"
    torch.save(
        {"model": model.state_dict(), "pairformer_fb": make_metadata("protenix", report, fc, host_path)}, conv_path
    )

    f, atoms = protenix_features(crn, seed=0)  # the benchmark's features at seed=0
    model.eval()
    benchmark.seed_all(0)
    with torch.no_grad():
        pred, _, _ = model(dict(f), None, None, mode="inference")
    want = S.ca_coords(atoms, pred["coordinate"][0].numpy())

    res = benchmark.run(
        bench_cfg(
            tmp_path,
            samples=["1crn"],
            variants=["original", "lowrank"],
            warmup=0,
            checkpoint=str(conv_path),
            model="tiny",
            device="cpu",
            seed=0,
        )
    )
    assert res["note"] is None and res["model"]["weights"] == "checkpoint" and res["model"]["converted"]
    orig, low = res["records"]
    assert orig["status"] == low["status"] == "ok"
    assert low["notes"]["factors"] == "from the converted checkpoint" and low["notes"]["rank"] == 4
    got = S.read_ca(tmp_path / "out" / low["structure_path"])[0]
    assert np.abs(got - want).max() < 2e-3 + 1e-5 * np.abs(want).max()
    assert low["vs_original"]["rmsd"] > 1e-3

    res = benchmark.run(
        bench_cfg(
            tmp_path,
            samples=["1crn"],
            variants=["original"],
            warmup=0,
            checkpoint=str(host_path),
            model="tiny",
            device="cpu",
            seed=0,
        )
    )
    assert res["model"]["weights"] == "checkpoint" and not res["model"]["converted"]
    assert res["records"][0]["status"] == "ok"
    # a checkpoint of another architecture than model= is refused with the reason
    with pytest.raises(ValueError, match="does not fit model=tiny"):
        benchmark.run(
            bench_cfg(
                tmp_path,
                samples=["1crn"],
                variants=["original"],
                checkpoint=str(host_path),
                model="tiny",
                overrides={"c_z": 16},
                device="cpu",
            )
        )


def test_benchmark_cuda_graphs_option(tmp_path):
    """cuda_graphs=true graphs the patched variants' diffusion step, ``original_graphs`` the
    unpatched host's; the wrapper's counts are recorded (on a CPU: pass-throughs, same
    structures)."""
    from pairformer_fb.bench import structure as benchmark

    res = benchmark.run(
        bench_cfg(
            tmp_path,
            samples=["1crn"],
            variants=["original", "exact", "original_graphs"],
            warmup=0,
            model="tiny",
            device="cpu",
            seed=0,
            cuda_graphs=True,
            raise_errors=True,
        )
    )
    orig, exact, graphed = res["records"]
    assert orig["status"] == exact["status"] == graphed["status"] == "ok"
    assert "cuda_graphs" not in orig["notes"]
    for r in (exact, graphed):
        g = r["notes"]["cuda_graphs"]
        assert g["passthrough"] > 0 and g["captures"] == g["failed"] == 0, g  # CPU: eager
    # unpatched either way, same seed: the same float32 computation (on a CPU the wrapper is a
    # pass-through; here the two forwards are bitwise equal). The RMSD is bounded by the float32
    # resolution of the coordinates, not a fixed Å figure: random weights put atoms ~2000 Å out,
    # where one float32 spacing is 2.4e-4 Å (a fixed 1e-4 failed when the metric was float32).
    xyz = S.read_ca(tmp_path / "out" / orig["structure_path"])[0]
    assert orig["vs_original"]["rmsd"] <= rmsd_floor(xyz)  # the original with itself: the metric's floor
    assert graphed["vs_original"]["rmsd"] <= fp32_rmsd_bound(xyz), (graphed["vs_original"], fp32_rmsd_bound(xyz))
    assert res["config"]["cuda_graphs"] is True
    assert "CUDA graphs of the diffusion step" in (tmp_path / "out" / "results.md").read_text()


# ---------------------------------------------------------------------------------------------
# host=openfold3

try:
    import openfold3  # noqa: F401

    OPENFOLD3_SKIP = None
except Exception as e:  # noqa: BLE001
    OPENFOLD3_SKIP = f"openfold3 cannot be imported ({type(e).__name__}: {e})"

needs_openfold3 = pytest.mark.skipif(OPENFOLD3_SKIP is not None, reason=OPENFOLD3_SKIP or "")


@needs_openfold3
def test_openfold3_features_1crn(crn):
    """OpenFold3's features of 1CRN: OpenFold3's per-residue atom lists (no OXT), its encodings
    (restype over its 32 classes, elements as atomic number - 1 over 119, atom-name characters),
    tokens <-> atoms consistent, the reference conformers rigid copies of the CCD's."""
    from openfold3.core.data.resources.residues import STANDARD_RESIDUES_WITH_GAP_3
    from openfold3.core.data.resources.token_atom_constants import (
        TOKEN_NAME_TO_ATOM_NAMES,
    )

    from pairformer_fb.hosts.openfold3.featurize import openfold3_features

    f, atoms = openfold3_features(crn, seed=3)
    assert all(v.shape[0] == 1 for v in f.values())
    f = {k: v[0] for k, v in f.items()}
    three = [protein_1to3()[c] for c in CRN]
    want_names = sum([list(TOKEN_NAME_TO_ATOM_NAMES[r]) for r in three], [])
    assert [str(n) for n in atoms.atom_name] == want_names and "OXT" not in want_names
    n_atom = len(want_names)
    assert f["num_atoms_per_token"].tolist() == [len(TOKEN_NAME_TO_ATOM_NAMES[r]) for r in three]
    assert f["start_atom_index"].tolist() == np.r_[0, np.cumsum(f["num_atoms_per_token"].numpy())[:-1]].tolist()
    assert torch.equal(torch.bincount(f["atom_to_token_index"].long()), f["num_atoms_per_token"].long())
    assert f["restype"].argmax(-1).tolist() == [STANDARD_RESIDUES_WITH_GAP_3.index(r) for r in three]
    assert f["residue_index"].tolist() == list(range(1, 47)) and f["asym_id"].eq(1).all()
    z = {"C": 6, "N": 7, "O": 8, "S": 16}
    assert (f["ref_element"].argmax(-1) + 1).tolist() == [z[str(e)] for e in atoms.element]
    names = ["".join(chr(int(i) + 32) for i in row).rstrip() for row in f["ref_atom_name_chars"].argmax(-1)]
    assert names == want_names and f["ref_pos"].shape == (n_atom, 3)
    assert f["msa"].shape == (1, 46, 32) and torch.equal(f["msa"][0], f["restype"])
    assert f["template_pseudo_beta_mask"].eq(0).all()
    ideal = np.asarray(build_atoms(crn, oxt=False).coord, dtype=np.float64)
    ref = f["ref_pos"].double().numpy()

    def d(x):
        return np.linalg.norm(x[:, None] - x[None], axis=-1)

    for t in (0, 20, 45):
        sel = (f["atom_to_token_index"] == t).numpy()
        assert np.allclose(d(ref[sel]), d(ideal[sel]), atol=1e-4) and np.allclose(ref[sel].mean(0), 0, atol=1e-4)


@needs_openfold3
def test_openfold3_benchmark_script_end_to_end(tmp_path):
    """python scripts/benchmark.py host=openfold3: full inference of the tiny OpenFold3 on 1CRN in
    the three variants: results.json's schema, the phases, the structures; exact agrees with
    the original (the same seed: the same diffusion noise), the untrained lowrank does not."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark.py"),
        "host=openfold3",
        "samples=[1crn]",
        "variants=[original,exact,lowrank]",
        "warmup=0",
        "repeats=2",
        "rank=4",
        f"output_dir={out}",
        "device=cpu",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "structure benchmark" in proc.stderr  # the progress bars

    result = json.loads((out / "results.json").read_text())
    assert "RANDOM weights" in result["note"] and "OpenFold3 features" in result["features"]
    m = result["model"]
    assert m["host"] == "openfold3" and m["preset"] == "tiny" and m["weights"] == "random"
    assert m["num_recycles"] == 1 and m["diffusion_steps"] == 2 and m["kernels"]["triangle_attention"] == "torch"
    recs = result["records"]
    assert [r["variant"] for r in recs] == ["original", "exact", "lowrank"]
    phases = ["input_embedding", "msa_module", "pairformer_trunk", "diffusion_sampling", "confidence_head", "other"]
    for r in recs:
        assert r["status"] == "ok" and r["sample"] == "1crn" and r["n_tokens"] == 46 and r["n_atoms"] == 326
        assert list(r["times_s"]) == phases + ["total"]
        assert all(r["times_s"][p] > 0 for p in phases[:5]), r["times_s"]
        assert sum(r["times_s"][p] for p in phases) == pytest.approx(r["times_s"]["total"], rel=1e-6)
        assert r["peak_memory_bytes"] == 0 and r["vs_reference"] is None
        assert set(r["vs_original"]) >= {"rmsd", "lddt", "tm_score"}
        assert (out / r["structure_path"]).is_file() and r["structure_path"].endswith(".cif")
    ca = {r["variant"]: S.read_ca(out / r["structure_path"]) for r in recs}
    assert ca["original"][1] == CRN and len(ca["original"][0]) == 46
    scale = np.linalg.norm(ca["original"][0] - ca["original"][0].mean(0), axis=-1).mean()
    orig, exact, low = (r["vs_original"] for r in recs)
    assert orig["rmsd"] <= rmsd_floor(ca["original"][0]) and orig["tm_score"] == pytest.approx(1, abs=1e-6)
    assert exact["rmsd"] < 1e-5 * scale + 1e-3 and exact["tm_score"] > 0.9999
    assert low["rmsd"] > 100 * exact["rmsd"] and low["tm_score"] < 0.999
    assert recs[1]["notes"]["patched_modules"] == recs[2]["notes"]["patched_modules"] > 0
    assert set(recs[1]["notes"]["kinds"]) == {"triangle", "single", "diffusion", "atom"}
    md = (out / "results.md").read_text()
    assert md.count("| 1crn |") == 3 and "openfold3 preset `tiny`" in md and "OpenFold3 features" in md
    assert (out / "time_vs_tokens.png").stat().st_size > 1000


@needs_openfold3
def test_openfold3_benchmark_writes_the_models_prediction(tmp_path, crn):
    """checkpoint= an OpenFold3 checkpoint: the benchmark's written structure is the prediction
    of that model, run by hand on the same features and seed (atoms in the features' order)."""
    from pairformer_fb.bench import structure as benchmark
    from pairformer_fb.hosts.openfold3.featurize import openfold3_features
    from pairformer_fb.hosts.openfold3.presets import build_openfold3
    from pairformer_fb.hosts.presets import randomise_

    model = randomise_(build_openfold3("tiny"), seed=11).eval()
    path = tmp_path / "of3.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, path)
    f, atoms = openfold3_features(crn, seed=0)
    benchmark.seed_all(0)
    with torch.no_grad():
        _, out = model(dict(f))
    want = out["atom_positions_predicted"][0, 0].numpy()

    res = benchmark.run(
        bench_cfg(
            tmp_path,
            host="openfold3",
            samples=["1crn"],
            variants=["original", "exact"],
            warmup=1,
            checkpoint=str(path),
            device="cpu",
            seed=0,
            raise_errors=True,
        )
    )
    assert res["note"] is None and res["model"]["weights"] == "checkpoint"
    orig, exact = res["records"]
    got = S.read_ca(tmp_path / "out" / orig["structure_path"])[0]
    assert np.abs(got - S.ca_coords(atoms, want)).max() < 2e-3 + 1e-5 * np.abs(want).max()
    assert exact["vs_original"]["rmsd"] < 1e-5 * np.abs(want).max() + 1e-3
    # a checkpoint of another architecture than model= is refused with the reason
    with pytest.raises(ValueError, match="does not fit model=tiny"):
        benchmark.run(
            bench_cfg(
                tmp_path,
                host="openfold3",
                samples=["1crn"],
                variants=["original"],
                checkpoint=str(path),
                overrides={"architecture.shared.c_z": 8},
                device="cpu",
            )
        )


# ---------------------------------------------------------------------------------------------
# host=boltz

try:
    from pairformer_fb.hosts.boltz.structure import boltz_missing

    BOLTZ_SKIP = "; ".join(boltz_missing()) or None
except Exception as e:  # noqa: BLE001
    BOLTZ_SKIP = f"{type(e).__name__}: {e}"

needs_boltz = pytest.mark.skipif(BOLTZ_SKIP is not None, reason=f"full Boltz-2 cannot run: {BOLTZ_SKIP}")


@needs_boltz
def test_boltz_features_and_molecules(crn):
    """Boltz-2's features of 1CRN through its own pipeline, with the canonical residues made
    from biotite's CCD: Boltz's atoms per residue (const.ref_atoms), the atoms returned in the
    features' order, the molecules' conformers the CCD ideal coordinates."""
    from boltz.data import const
    from rdkit import Chem

    from pairformer_fb.hosts.boltz.featurize import (
        boltz_features,
        boltz_molecules,
        ccd_rdkit_mol,
    )

    mols, source = boltz_molecules(None)
    assert "biotite" in source and set(mols) == set(const.canonical_tokens)
    trp = ccd_rdkit_mol("TRP")
    assert Chem.RemoveHs(trp, sanitize=False).GetNumAtoms() == 15  # 14 heavy + OXT
    assert {a.GetProp("name") for a in trp.GetAtoms()} >= set(const.ref_atoms["TRP"])
    assert str(Chem.FindMolChiralCenters(trp, useLegacyImplementation=False)) == "[(1, 'S')]"  # L-Trp Cα
    f, atoms = boltz_features(crn, mols, seed=0)
    three = [protein_1to3()[c] for c in CRN]
    assert [str(n) for n in atoms.atom_name] == sum([list(const.ref_atoms[r]) for r in three], [])
    n = atoms.array_length()
    pad = f["atom_pad_mask"][0].bool()
    assert int(pad.sum()) == n and pad[:n].all() and f["ref_pos"].shape[1] % 32 == 0
    assert f["res_type"][0].argmax(-1).tolist() == [const.token_ids[r] for r in three]
    assert torch.equal(
        f["atom_to_token"][0][:n].argmax(-1),
        torch.repeat_interleave(torch.arange(46), torch.tensor([len(const.ref_atoms[r]) for r in three])),
    )


@needs_boltz
def test_boltz_features_msa_dir(tmp_path, crn):
    """host=boltz with msa_dir=: the entity's A3M read by Boltz's own parse_a3m and featurised by
    its featuriser (unpaired): the rows in the A3M's order, '-' Boltz's gap token, a lower-case
    insertion a deletion in Boltz's parsed MSA; none without msa_dir (one row, the query); an
    A3M whose first row is not the query is refused, naming the file and the entity."""
    from boltz.data import const

    from pairformer_fb.hosts.boltz.featurize import (
        _boltz_msa,
        boltz_features,
        boltz_molecules,
    )

    mols, _ = boltz_molecules(None)
    f0, _ = boltz_features(crn, mols, seed=0)
    assert f0["msa"].shape == (1, 1, 46)
    assert f0["msa"][0, 0].tolist() == f0["res_type"][0].argmax(-1).tolist()

    a3m = tmp_path / "1crn.a3m"
    a3m.write_text(f">query\n{CRN}\n>hit1\n{CRN[:5]}kk{CRN[5:10]}-{CRN[11:]}\n>hit2\nG{CRN[1:]}\n")
    f, atoms = boltz_features(crn, mols, seed=0, msa_dir=tmp_path)
    query = f["res_type"][0].argmax(-1)
    msa = f["msa"][0]
    assert msa.shape == (3, 46) and f["msa_mask"][0].bool().all()
    assert msa[0].tolist() == query.tolist() == [const.token_ids[protein_1to3()[c]] for c in CRN]
    assert msa[1, 10] == const.token_ids["-"] and torch.equal(msa[1, :10], query[:10])
    assert torch.equal(msa[1, 11:], query[11:])
    assert msa[2, 0] == const.token_ids["GLY"] and torch.equal(msa[2, 1:], query[1:])
    assert not f["msa_paired"][0, 1:].any()  # unpaired homologs: parse_a3m gives no taxonomy
    assert torch.allclose(f["profile"][0, 10, const.token_ids["-"]], torch.tensor(1 / 3))
    assert atoms.array_length() == int(f["atom_pad_mask"].sum())
    # Boltz's parsed MSA counts the insertion 'kk' before column 5 of row 2
    parsed = _boltz_msa(crn, 0, a3m, CRN)
    seq = parsed.sequences[1]
    assert parsed.deletions[seq["del_start"] : seq["del_end"]].tolist() == [(5, 2)]
    # (boltz 2.2.1's featuriser, as `boltz predict` runs it, then drops the deletions of every
    # row after one without any: construct_paired_msa re-slices chain_deletions per row)
    assert not f["has_deletion"].any()

    a3m.write_text(f">hit2\nG{CRN[1:]}\n>query\n{CRN}\n")
    with pytest.raises(InputError, match=r"1crn, entity 1: .*1crn\.a3m: the first row is not the query"):
        boltz_features(crn, mols, seed=0, msa_dir=tmp_path)
    a3m.write_text(f">query\n{CRN}\n>bad\n{CRN[:-1]}\n")
    with pytest.raises(InputError, match="entity 1: .*aligned columns"):
        boltz_features(crn, mols, seed=0, msa_dir=tmp_path)


@needs_boltz
def test_boltz_benchmark_end_to_end_and_checkpoint(tmp_path):
    """host=boltz: full inference of a tiny Boltz-2 on 1CRN in the three variants (the script:
    schema, phases, structures; exact agrees with the original, the untrained lowrank does
    not); then checkpoint= a Lightning checkpoint with hyper_parameters: the written structure
    is that model's prediction, run by hand on the same features and seed."""
    from pairformer_fb.bench import structure as benchmark
    from pairformer_fb.hosts.boltz.featurize import boltz_features, boltz_molecules
    from pairformer_fb.hosts.boltz.presets import BOLTZ2_TINY, build_boltz2
    from pairformer_fb.hosts.presets import randomise_

    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark.py"),
        "host=boltz",
        "samples=[1crn]",
        "variants=[original,exact,lowrank]",
        "warmup=0",
        "repeats=1",
        "rank=4",
        f"output_dir={out}",
        "device=cpu",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert "RANDOM weights" in result["note"] and "Boltz-2's own features" in result["features"]
    m = result["model"]
    assert m["host"] == "boltz" and m["preset"] == "tiny" and m["recycling_steps"] == 1 and m["diffusion_steps"] == 2
    recs = result["records"]
    phases = ["input_embedding", "msa_module", "pairformer_trunk", "diffusion_sampling", "confidence_head", "other"]
    for r in recs:
        assert r["status"] == "ok" and r["n_tokens"] == 46 and r["n_atoms"] == 326
        assert list(r["times_s"]) == phases + ["total"] and all(r["times_s"][p] > 0 for p in phases[:5])
        assert sum(r["times_s"][p] for p in phases) == pytest.approx(r["times_s"]["total"], rel=1e-6)
        assert (out / r["structure_path"]).is_file()
    ca = S.read_ca(out / recs[0]["structure_path"])
    assert ca[1] == CRN
    scale = np.linalg.norm(ca[0] - ca[0].mean(0), axis=-1).mean()
    orig, exact, low = (r["vs_original"] for r in recs)
    assert orig["rmsd"] <= rmsd_floor(ca[0]) and exact["rmsd"] < 1e-5 * scale + 1e-3 and exact["tm_score"] > 0.9999
    assert low["rmsd"] > 100 * exact["rmsd"] and low["tm_score"] < 0.999
    assert recs[1]["notes"]["patched_modules"] == recs[2]["notes"]["patched_modules"] > 0

    crn = read_samples(["1crn"])[0]
    model = randomise_(build_boltz2(BOLTZ2_TINY), seed=11).eval()
    path = tmp_path / "boltz2.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(BOLTZ2_TINY)}, path)
    f, atoms = boltz_features(crn, boltz_molecules(None)[0], seed=0)
    benchmark.seed_all(0)
    with torch.no_grad():
        o = model(
            dict(f),
            recycling_steps=1,
            num_sampling_steps=2,
            diffusion_samples=1,
            max_parallel_samples=1,
            run_confidence_sequentially=True,
        )
    want = o["sample_atom_coords"][0][f["atom_pad_mask"][0].bool()].numpy()
    res = benchmark.run(
        bench_cfg(
            tmp_path,
            host="boltz",
            samples=["1crn"],
            variants=["original"],
            warmup=0,
            checkpoint=str(path),
            device="cpu",
            seed=0,
            raise_errors=True,
            overrides={"recycling_steps": 1, "sampling_steps": 2},
            output_dir=str(tmp_path / "out2"),
        )
    )
    assert res["model"]["preset"] == "checkpoint" and res["model"]["weights"] == "checkpoint"
    assert res["model"]["recycling_steps"] == 1 and res["model"]["diffusion_steps"] == 2
    got = S.read_ca(tmp_path / "out2" / res["records"][0]["structure_path"])[0]
    assert np.abs(got - S.ca_coords(atoms, want)).max() < 2e-3 + 1e-5 * np.abs(want).max()


def test_benchmark_diffusion_dtype_option(tmp_path):
    """diffusion_dtype=bf16: the patched variant's diffusion attentions compute in bf16 (recorded
    in its notes); its structure stays close to the original's; the unpatched one is untouched."""
    from pairformer_fb.bench import structure as benchmark

    res = benchmark.run(
        bench_cfg(
            tmp_path,
            samples=["1crn"],
            variants=["original", "exact"],
            warmup=0,
            model="tiny",
            device="cpu",
            seed=0,
            diffusion_dtype="bf16",
            raise_errors=True,
        )
    )
    orig, exact = res["records"]
    assert orig["status"] == exact["status"] == "ok"
    assert exact["notes"]["diffusion_dtype"] == "bf16" and "diffusion_dtype" not in orig["notes"]
    assert 0 < exact["vs_original"]["rmsd"] < 0.5


def test_attention_cuda_graphs_setting_is_checked_before_any_work(tmp_path):
    """cuda_graphs must be a bool, and true needs a CUDA device: one line naming it, no output."""
    from omegaconf import OmegaConf

    from pairformer_fb.bench import attention

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "bench_attention.yaml")
    cfg.output_dir = str(tmp_path / "out")
    cfg.cuda_graphs = "yes"
    with pytest.raises(ValueError, match="cuda_graphs must be true or false, got 'yes'"):
        attention.run(cfg)
    if not torch.cuda.is_available():
        cfg.cuda_graphs = True
        cfg.device = "cpu"
        with pytest.raises(ValueError, match="cuda_graphs=true .* needs a CUDA device, got device=cpu"):
            attention.run(cfg)
    assert not (tmp_path / "out").exists()


def test_model_auto_takes_a_converted_checkpoints_preset():
    """model=auto builds the preset a converted checkpoint records (as fine-tuning does), not the
    device's default: a tiny conversion benchmarked on a GPU would otherwise build the base model."""
    from types import SimpleNamespace

    from pairformer_fb.hosts.structure_hosts import auto_preset

    converted = SimpleNamespace(metadata={"model_preset": "tiny"})
    plain = SimpleNamespace(metadata=None)
    auto, named = SimpleNamespace(model="auto"), SimpleNamespace(model="v2")
    assert auto_preset(auto, converted, "base") == "tiny"
    assert auto_preset(auto, plain, "base") == auto_preset(auto, None, "base") == "base"
    assert auto_preset(named, converted, "base") == "v2"
