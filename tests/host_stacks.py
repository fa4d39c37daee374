"""Small real trunk stacks of each host, their inputs and calling conventions, for the host tests:
the parametrised ``test_patch_hosts.py`` (what every host must do alike) and each host's own
``test_patch_<host>.py`` (what only that host has).

The stacks are built from the installed host packages (Protenix 2.0.0, Boltz-2 2.2.1, OpenFold3
0.5.0, installed with ``pip install --no-deps`` plus requirements-hosts.txt); a host that cannot
be imported is skipped with the reason (``HostStack.skip``). The hosts zero-initialise their
output projections and gates, so every parameter is re-randomised (``randomise_``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from host_models import randomise_
from torch import nn

# without CUDA, importing protenix would try to build its fused CUDA layer norm
os.environ.setdefault("LAYERNORM_TYPE", "torch")


@dataclass(frozen=True)
class HostStack:
    """One host's trunk stack as the tests use it.

    * ``make_stack(n_blocks, **kwargs)``: the stack, randomised, in eval mode;
    * ``inputs(n, lengths, seed)``: the stack's positional inputs ``(s, z, *masks)`` for a batch
      of ``len(lengths)`` (float 0 / 1 masks as the host has them; None: one element, no padding);
    * ``run(stack, inputs, **kwargs)``: ``(s, z)`` of one forward, no grad, inputs cloned;
    * ``blocks(stack)``: its blocks; ``triangle(block, node)`` / ``single(block)``: the modules
      patched in a block; ``path``: the report path of block 0's starting triangle attention;
    * ``nodes``: the report's node of the block's two triangle attentions; ``tri_bias_linear``:
      the triangle attention's bias projection (its path in the host module);
    * ``chunked``: forward arguments of the host's chunked (low-memory) path;
    * ``other_kernels``: a host kernel switch that computes the same function (ignored when patched);
    * ``package_modules`` / ``install_hint``: what ``patch_model`` imports, and the hint it gives
      without them."""

    host: str
    probe: str  # a module of the host package the stacks need
    make_stack: Callable[..., nn.Module]
    inputs: Callable[..., tuple]
    run: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    blocks: Callable[[nn.Module], list[nn.Module]]
    triangle: Callable[[nn.Module, str], nn.Module]
    single: Callable[[nn.Module], nn.Module]
    path: str
    nodes: tuple[str, str]
    tri_bias_linear: str
    chunked: dict[str, Any]
    other_kernels: dict[str, Any]
    package_modules: tuple[str, ...]
    install_hint: str
    widths: dict[str, int] = field(default_factory=dict)

    @property
    def skip(self) -> str | None:
        """Why this host's tests are skipped (None: its package imports)."""
        try:
            importlib.import_module(self.probe)
        except Exception as e:  # noqa: BLE001 - any import failure means: no usable host here
            return f"{self.host} cannot be imported ({type(e).__name__}: {e}); install it with {self.install_hint}"
        return None


def _masks(n: int, lengths, batch: int) -> torch.Tensor:
    token = torch.ones(batch, n)
    for b, length in enumerate(lengths or []):
        token[b, length:] = 0
    return token


def tri_att(holder: nn.Module, node: str) -> nn.Module:
    """The triangle attention of ``node`` in a block that holds them as ``tri_att_start`` /
    ``tri_att_end`` (every host's naming)."""
    return getattr(holder, f"tri_att_{'start' if node == 'starting' else 'end'}")


def _s_z(n, c_s, c_z, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    batch = 1 if lengths is None else len(lengths)
    s = torch.randn(batch, n, c_s, generator=g)
    z = torch.randn(batch, n, n, c_z, generator=g)
    return s, z, _masks(n, lengths, batch)


# --- Protenix: PairformerStack(s, z, pair_mask), blocks hold the attentions -----------------------
PROTENIX_WIDTHS = dict(c_z=32, c_s=64, heads=4)


def protenix_stack(n_blocks=3, c_z=PROTENIX_WIDTHS["c_z"], c_s=PROTENIX_WIDTHS["c_s"], **kwargs) -> nn.Module:
    from protenix.model.modules.pairformer import PairformerStack

    torch.manual_seed(0)
    stack = PairformerStack(n_blocks=n_blocks, n_heads=PROTENIX_WIDTHS["heads"], c_z=c_z, c_s=c_s, **kwargs)
    return randomise_(stack).eval()


def protenix_inputs(n=13, lengths=None, seed=1, c_z=PROTENIX_WIDTHS["c_z"], c_s=PROTENIX_WIDTHS["c_s"]):
    """s, z and the pair mask."""
    s, z, token = _s_z(n, c_s, c_z, lengths, seed)
    return s, z, token[:, :, None] * token[:, None, :]


def protenix_run(stack, inputs, **kwargs):
    s, z, pair_mask = inputs
    with torch.no_grad():
        return stack(s.clone(), z.clone(), pair_mask, **kwargs)


PROTENIX = HostStack(
    host="protenix",
    probe="protenix.model.modules.pairformer",
    make_stack=protenix_stack,
    inputs=protenix_inputs,
    run=protenix_run,
    blocks=lambda stack: list(stack.blocks),
    triangle=tri_att,
    single=lambda block: block.attention_pair_bias,
    path="blocks.0.tri_att_start",
    nodes=("starting", "ending"),
    tri_bias_linear="linear",
    chunked={"chunk_size": 4, "inplace_safe": True},
    other_kernels={"triangle_attention": "deepspeed"},
    package_modules=(
        "protenix.model.modules.pairformer",
        "protenix.model.modules.transformer",
        "protenix.model.triangular.triangular",
    ),
    install_hint="pip install --no-deps protenix==2.0.0 -r requirements-hosts.txt",
    widths=PROTENIX_WIDTHS,
)


# --- Boltz-2: PairformerModule(s, z, mask, pair_mask), "layers" ----------------------------------
BOLTZ_WIDTHS = dict(c_z=16, c_s=32, heads=4, tri_heads=2, tri_width=8)


def boltz_stack(n_blocks=3) -> nn.Module:
    from boltz.model.layers.pairformer import PairformerModule

    w = BOLTZ_WIDTHS
    torch.manual_seed(0)
    stack = PairformerModule(
        w["c_s"],
        w["c_z"],
        n_blocks,
        num_heads=w["heads"],
        dropout=0.0,
        pairwise_head_width=w["tri_width"],
        pairwise_num_heads=w["tri_heads"],
        v2=True,
    )
    return randomise_(stack).eval()


def boltz_inputs(n=13, lengths=None, seed=1):
    """s, z, the token mask and the pair mask."""
    s, z, token = _s_z(n, BOLTZ_WIDTHS["c_s"], BOLTZ_WIDTHS["c_z"], lengths, seed)
    return s, z, token, token[:, :, None] * token[:, None, :]


def boltz_run(stack, inputs, chunk_size=None, **kwargs):
    """The stack's forward (chunk_size None) or its layers with an explicit triangle chunk size
    (PairformerModule picks 512 / 128 itself, more than the tests' N)."""
    s, z, mask, pair_mask = inputs
    with torch.no_grad():
        if chunk_size is None and not kwargs:
            return stack(s.clone(), z.clone(), mask, pair_mask)
        s, z = s.clone(), z.clone()
        for layer in stack.layers:
            s, z = layer(s, z, mask, pair_mask, chunk_size, **kwargs)
        return s, z


BOLTZ = HostStack(
    host="boltz",
    probe="boltz.model.layers.pairformer",
    make_stack=boltz_stack,
    inputs=boltz_inputs,
    run=boltz_run,
    blocks=lambda stack: list(stack.layers),
    triangle=tri_att,
    single=lambda layer: layer.attention,
    path="layers.0.tri_att_start",
    nodes=("starting", "ending"),
    tri_bias_linear="linear",
    chunked={"chunk_size": 4},
    # use_kernels would also switch the triangle multiplications to cuEquivariance: not on a CPU
    other_kernels={"use_cuequiv_attn": True},
    package_modules=(
        "boltz.model.layers.pairformer",
        "boltz.model.layers.attentionv2",
        "boltz.model.layers.triangular_attention.attention",
    ),
    install_hint="pip install --no-deps boltz==2.2.1 einops",
    widths=BOLTZ_WIDTHS,
)


# --- OpenFold3: PairFormerStack(s, z, single_mask, pair_mask), triangles under pair_stack --------
OPENFOLD3_WIDTHS = dict(c_z=16, c_s=32)


def openfold3_stack(n_blocks=3, inf=1e9, **kwargs) -> nn.Module:
    from openfold3.core.model.latent.pairformer import PairFormerStack

    torch.manual_seed(0)
    stack = PairFormerStack(
        c_s=OPENFOLD3_WIDTHS["c_s"],
        c_z=OPENFOLD3_WIDTHS["c_z"],
        c_hidden_pair_bias=8,
        no_heads_pair_bias=4,
        c_hidden_mul=16,
        c_hidden_pair_att=8,
        no_heads_pair=2,
        no_blocks=n_blocks,
        transition_type="swiglu",
        transition_n=2,
        pair_dropout=0.25,
        fuse_projection_weights=False,
        blocks_per_ckpt=None,
        inf=inf,
        **kwargs,
    )
    return randomise_(stack).eval()


def openfold3_inputs(n=13, lengths=None, seed=1):
    """s, z, the token (single) mask and the pair mask."""
    s, z, token = _s_z(n, OPENFOLD3_WIDTHS["c_s"], OPENFOLD3_WIDTHS["c_z"], lengths, seed)
    return s, z, token, token[:, :, None] * token[:, None, :]


def openfold3_run(stack, inputs, **kwargs):
    s, z, single_mask, pair_mask = inputs
    with torch.no_grad():
        return stack(s.clone(), z.clone(), single_mask, pair_mask, **kwargs)


OPENFOLD3 = HostStack(
    host="openfold3",
    probe="openfold3.core.model.latent.pairformer",
    make_stack=openfold3_stack,
    inputs=openfold3_inputs,
    run=openfold3_run,
    blocks=lambda stack: list(stack.blocks),
    triangle=lambda block, node: tri_att(block.pair_stack, node),
    single=lambda block: block.attn_pair_bias,
    path="blocks.0.pair_stack.tri_att_start",
    nodes=("starting", "ending"),
    tri_bias_linear="linear_z",
    chunked={"chunk_size": 4, "inplace_safe": True},
    other_kernels={"use_deepspeed_evo_attention": True},
    package_modules=(
        "openfold3.core.model.latent.base_blocks",
        "openfold3.core.model.latent.pairformer",
        "openfold3.core.model.layers.attention_pair_bias",
        "openfold3.core.model.layers.triangular_attention",
    ),
    install_hint="pip install --no-deps openfold3==0.5.0 gemmi ml-collections absl-py biotite",
    widths=OPENFOLD3_WIDTHS,
)

HOST_STACKS = {h.host: h for h in (PROTENIX, BOLTZ, OPENFOLD3)}

__all__ = ["BOLTZ", "HOST_STACKS", "HostStack", "OPENFOLD3", "PROTENIX"]
