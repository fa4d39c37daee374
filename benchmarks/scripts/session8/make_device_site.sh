#!/bin/bash
# Session 8: the Python packages the device image lacks, unpacked and packed as one xz archive
# (a device call carries at most 64 MiB with the tree; the unpacked wheels are ~350 MB).
#
#   bash benchmarks/scripts/session8/make_device_site.sh ladder   # -> .devsite/site.tar.xz (~60 MB)
#   bash benchmarks/scripts/session8/make_device_site.sh tests    # -> .devsite_tests/site_tests.tar.xz (~45 MB)
#
# ladder: Protenix 2.0.0 and its imports (rdkit, optree, ml_collections), biotite 1.6.0, biopython,
#   tmtools, hydra-core / omegaconf / antlr4, platformdirs and cuEquivariance 0.13.0 with the cu13
#   ops (the cu12 ones need libnvrtc.so.12, which the CUDA 13 image lacks) -- the ladder's stock.
# tests: the same without cuEquivariance, plus Boltz-2 2.2.1 (einx, frozendict, mashumaro) and
#   OpenFold3 0.5.0 (gemmi): every test marked gpu, all three hosts.
# Trimmed to fit: biotite's CCD cut to the standard residues (the FASTA samples need no other),
# cuEquivariance's Triton caches of other GPUs, rdkit's Contrib, tmtools' test data, stubs; xz -9.
# On the device: tar -xJf ARCHIVE -C /tmp && export PYTHONPATH=/tmp/site:$PWD (call.sh does).
set -euo pipefail
KIND=${1:?ladder or tests}
root=$(git rev-parse --show-toplevel); cd "$root"
work=$(mktemp -d); site=$work/site; mkdir -p "$site" "$work/whl"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
pkgs=(protenix==2.0.0 rdkit==2025.9.3 optree==0.17.0 ml_collections==1.1.0 biotite==1.6.0 biopython==1.88
      tmtools==0.3.0 hydra-core==1.3.8 omegaconf==2.3.0 platformdirs)
case $KIND in
  ladder) pkgs+=(cuequivariance==0.13.0 cuequivariance-torch==0.13.0 cuequivariance-ops-torch-cu13==0.13.0
                 cuequivariance-ops-cu13==0.13.0); out=.devsite/site.tar.xz ;;
  tests) pkgs+=(boltz==2.2.1 einx==0.3.0 frozendict==2.5.1 mashumaro==3.23 openfold3==0.5.0 gemmi==0.7.5)
         out=.devsite_tests/site_tests.tar.xz ;;
  *) echo "KIND must be ladder or tests"; exit 2 ;;
esac
python3 -m pip download -q --no-deps "${plat[@]}" -d "$work/whl" "${pkgs[@]}"
python3 -m pip wheel -q --no-deps -w "$work/whl" antlr4-python3-runtime==4.9.3
for w in "$work"/whl/*.whl; do unzip -q -o "$w" -d "$site"; done
python3 - "$site/biotite/structure/info/components.bcif" <<'PY'
import sys
import numpy as np
from biotite.structure.io.pdbx import compress
from biotite.structure.io.pdbx.bcif import BinaryCIFBlock, BinaryCIFCategory, BinaryCIFColumn, BinaryCIFData, BinaryCIFFile
keep = ("ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL UNK MSE SEC PYL "
        "A C G U DA DC DG DT N DN HOH UNL PO4 SO4 GOL EDO NAG HEM ZN MG CA NA CL K").split()
block, cut = BinaryCIFFile.read(sys.argv[1]).block, BinaryCIFBlock()
for name in block:
    cat = block[name]
    rows = np.isin(cat["id" if name == "chem_comp" else "comp_id"].as_array(), keep)
    cut[name] = BinaryCIFCategory({
        c: BinaryCIFColumn(BinaryCIFData(cat[c].as_array()[rows]),
                           None if cat[c].mask is None else BinaryCIFData(cat[c].mask.array[rows]))
        for c in cat.keys()})
f = BinaryCIFFile(); f["components"] = cut; compress(f).write(sys.argv[1])
PY
cd "$site"
rm -rf rdkit-stubs tests rdkit/Docs rdkit/Contrib tmtools/data biotraj biotraj-* include lib64
find . -name "*.pyi" -delete; find . -name "__pycache__" -prune -exec rm -rf {} +
[ -d cuequivariance_ops/triton/cache ] && find cuequivariance_ops/triton/cache -name "*.json" ! -name "*.9.0.json" -delete
mkdir -p "$root/$(dirname $out)"; tar -cf - -C "$work" site | xz -T0 -9 > "$root/$out"
rm -rf "$work"; ls -la "$root/$out"
