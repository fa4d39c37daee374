"""Boltz-2 (boltz 2.2.1) adapter.

Every Pairformer-like stack of Boltz-2 is made of the blocks of ``boltz.model.layers.pairformer``:
``PairformerLayer`` (with ``v2=True``: the trunk's ``Boltz2.pairformer_module`` and the
confidence module's ``ConfidenceModule.pairformer_stack``, both ``PairformerModule``) and
``PairformerNoSeqLayer`` (no single track: the MSA module's ``MSALayer.pairformer_layer``, the
template modules' ``TemplateModule`` / ``TemplateV2Module.pairformer`` and the affinity module's
``AffinityModule.pairformer_stack``, the latter two ``PairformerNoSeqModule``). A block holds

* ``tri_att_start`` / ``tri_att_end``: ``boltz.model.layers.triangular_attention.attention.
  TriangleAttention`` (``TriangleAttentionStartingNode`` is the class itself,
  ``TriangleAttentionEndingNode`` the subclass with ``starting=False``), built with
  ``inf=1e9``. Unlike Protenix, the block does not transpose z: the ending-node module
  transposes x and the mask itself, runs the starting-node code (layer norm, bias projection,
  attention) and transposes the result back, so its bias is projected from the transposed z:
  BIAS[i, h, j, k] = b[k, i, h], our ``node="ending", ending_bias="transposed"``.
* ``attention`` (``PairformerLayer`` only): ``boltz.model.layers.attentionv2.AttentionPairBias``.
  The layer applies the single pre-norm ``pre_norm_s`` itself, outside the module (our
  ``layer_norm_s=False``), and calls it as ``attention(s=s_normed, z=z.float(),
  mask=mask.float(), k_in=s_normed)`` inside ``torch.autocast("cuda", enabled=False)`` on
  ``s.float()``: the single attention runs in fp32. ``mask`` is the [B, N] token mask, applied
  to the keys only. (A ``PairformerLayer`` with ``v2=False`` holds the v1 ``AttentionPairBias``,
  whose forward takes no ``k_in``: the layer cannot call it, and it is not patched.)

Parameter mapping (host -> ours; every one shared, not copied):

    TriangleAttention                      FlashBiasTriangleAttention
      layer_norm (weight, bias, eps)         layer_norm
      linear        (c_in -> H, no bias)     linear_b
      mha.linear_q / _k / _v (no bias)       linear_q / _k / _v
      mha.linear_g  (no bias)                linear_g   (gate_bias=False)
      mha.linear_o  (no bias)                linear_o   (out_bias=False)
      mha.no_heads, mha.c_hidden (per head)  n_heads, head_dim;  inf must be 1e9
      starting=True / False                  node="starting" / "ending", ending_bias="transposed"

    AttentionPairBias (v2)                 FlashBiasAttentionPairBias (layer_norm_s=False)
      proj_z[0] (LayerNorm, eps 1e-5)        layer_norm_z
      proj_z[1] (c_z -> H, no bias)          linear_z
      proj_q (with bias)                     linear_q   (q_bias=True)
      proj_k / proj_v / proj_g / proj_o      linear_k / _v / _g / _o (no biases)
      num_heads, head_dim (= c_s / H)        n_heads, head_dim

Masking: the triangle attention adds ``inf * (mask - 1)`` with inf = 1e9, as the FlashBias op
does. The single attention adds ``-inf * (1 - mask)`` with its default inf = 1e6 instead of
1e9; a masked key's weight is exp(-1e6 + O(logits)) = 0 in fp32 either way, so the two agree
whenever a batch element has at least one valid token (a fully masked element, all padding,
averages its values with other weights: its output is meaningless in both). Other inf values
below 1e6 are refused.

Diffusion module (kinds "diffusion" and "atom"): Boltz-2's ``DiffusionConditioning`` projects
the conditioned pair rep into the biases of all layers of a transformer at once, once per trunk
pass (``diffusion_conditioning["token_trans_bias"]`` [B, N, N, L*H], ``atom_enc_bias`` /
``atom_dec_bias`` over the atom windows), and each ``DiffusionTransformerLayer`` applies its
adaptive layer norm and output gate itself, around ``pair_bias_attn``: an ``AttentionPairBias``
with ``compute_pair_bias=False``, called as ``(s=b, z=<its slice [B, Lq, Lk, H] of the bias>,
mask=<float key mask [B*m, Lk]>, k_in=b or to_keys(b), multiplicity=m)``. It is mapped onto
``FlashBiasPrecomputedBiasAttention`` (proj_q / _k / _v / _g / _o -> linear_q / _k / _v / _g / _o,
shared), which keeps the host's conventions: projections in the caller's precision, the attention
core in fp32 with CUDA autocast off and cast back to v's dtype, the gate applied after it, the
samples of a structure consecutive (``repeat_interleave(m, 0)``). Kind "diffusion" is the
``DiffusionModule.token_transformer``: the bias is *not* repeated over the m samples (one op call
per structure, bias batch 1 read with stride 0) and its head-major fp32 copy (exact) or truncated
SVD factors (lowrank, ``svd_config``) are computed at the first step and reused while the scope
of the ``DiffusionModule`` call (hooks installed by ``patch_model``: every argument except
``r_noisy``, ``times`` and ``multiplicity``) is unchanged. Kind "atom" is the
``AtomTransformer`` of the atom attention encoder / decoder (stack "diffusion"; the trunk's
``InputEmbedder`` atom encoder: stack "input"): windows of W queries against ``to_keys`` windows of H keys as the op's batch,
always exact and uncached (the host itself repeats that bias over the samples before the layer
sees it, a fresh tensor per call). Factor networks (lowrank with ``factor_config``, "distill")
are refused: there is no pair representation to feed them. The key mask is the host's 0/1 mask
(its -1e6 against the op's -1e9: equal whenever a row has a valid key; a window with no valid
key at all, only padding atoms, gives those padding atoms different outputs in the two; nothing
downstream reads them: they are masked as keys, weigh 0 in atom_to_token and their coordinate
updates are masked).

Kernel switches: the wrappers keep the host signatures. ``use_kernels`` (the host's
cuequivariance ``triangle_attention`` kernel; the layer passes ``use_cuequiv_attn or
use_kernels``) computes the same function as the host's torch path, which the FlashBias op now
computes: it is accepted and ignored. The host ignores ``chunk_size`` when ``use_kernels`` is
set; the wrapper reads it as the least number of attention rows per op call (more as
``FlashBiasTriangleAttention.chunk_budget_bytes`` allows: the op has no N^3 logits;
``PairformerModule`` picks 512 or 128 in eval mode, None in training). The single-attention wrapper disables CUDA autocast around our module as the host
does around its attention, so it computes in fp32 with the fp32 inputs the layer gives it. A
single-attention call with ``k_in`` other than ``s`` or ``multiplicity != 1`` (neither is used
by the Pairformer) runs the original host module.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
from torch import nn

from ...modules import (
    FactorConfig,
    FlashBiasAttentionPairBias,
)
from ...modules.bias_cache import SVDConfig
from ...modules.precomputed_bias_attention import FlashBiasPrecomputedBiasAttention
from ..base import (
    DIFFUSION_KINDS,
    PatchedModule,
    Site,
    UnsupportedModuleError,
    build_on_meta,
    build_triangle_attention,
    check_linear,
    check_no_meta,
    factor_network,
    outermost,
    projection_biases,
    share_layer_norm,
    share_linear,
    share_projections,
    stack_and_index,
)
from ..call_scope import ScopedPatchedModule, scope_of

HOST = "boltz"
PACKAGE = "boltz"
INSTALL_HINT = (
    "pip install --no-deps boltz==2.2.1 einops (--no-deps: boltz's pins would replace torch and "
    "numpy); the Pairformer modules need nothing else"
)
STACKS: tuple[str, ...] = ("pairformer", "msa", "template", "confidence", "affinity", "diffusion", "input")
# "diffusion" holds only kinds "diffusion" / "atom", so the default kinds patch the trunk alone
DEFAULT_STACKS: tuple[str, ...] = ("pairformer", "diffusion")
DISTRIBUTION = "boltz"  # its distribution in the package registry (converted checkpoints record its version)
# state-dict keys that only this host's trunk Pairformer has, after a container's prefix (how
# convert/checkpoint.py tells a checkpoint's host): Boltz-2's blocks are "layers" (``_orig_mod.``: a torch.compile'd module)
CHECKPOINT_KEYS: re.Pattern[str] = re.compile(r"(?:^|\.)pairformer_module\.(?:_orig_mod\.)?layers\.\d+\.")
TRUNK_STACK_CLASS = "PairformerModule"  # the class name of its trunk Pairformer stack
# the classes of the host modules a prediction runs only after its diffusion sampling (Boltz-2's confidence module):
# entering one releases the diffusion attentions' cached biases (patch_model)
AFTER_SAMPLING_CLASSES: tuple[str, ...] = ("ConfidenceModule",)

# the smallest single-attention inf for which masked keys get weight 0 in fp32 (Boltz's default)
_MIN_SINGLE_INF = 1e6
# ancestor class name -> stack name (by name, so that no further boltz module is imported)
_STACK_OF_ANCESTOR = {
    "ConfidenceModule": "confidence",
    "TemplateModule": "template",
    "TemplateV2Module": "template",
    "MSAModule": "msa",
    "MSALayer": "msa",
    "AffinityModule": "affinity",
}


def _host_classes():
    """((PairformerLayer, PairformerNoSeqLayer), TriangleAttention, AttentionPairBias v2),
    importing boltz if needed."""
    try:
        from boltz.model.layers.attentionv2 import AttentionPairBias
        from boltz.model.layers.pairformer import PairformerLayer, PairformerNoSeqLayer
        from boltz.model.layers.triangular_attention.attention import TriangleAttention
    except ImportError as e:
        raise ImportError(f"host 'boltz' needs the boltz package, which failed to import ({e}): {INSTALL_HINT}") from e
    return (PairformerLayer, PairformerNoSeqLayer), TriangleAttention, AttentionPairBias


def find_sites(model: nn.Module, *, stacks: Sequence[str], kinds: Sequence[str]) -> list[Site]:
    """The triangle attentions (kind "triangle") and single attentions ("single") of every
    PairformerLayer / PairformerNoSeqLayer of the selected stacks, in model order; before them
    the attentions of the diffusion module's token transformer ("diffusion") and of the atom
    transformers ("atom")."""
    block_classes, TriangleAttention, AttentionPairBias = _host_classes()
    sites = []
    if set(kinds) & set(DIFFUSION_KINDS):
        sites += _diffusion_sites(model, stacks, kinds, AttentionPairBias)
    for path, block in model.named_modules():
        if not isinstance(block, block_classes):
            continue
        stack, index = stack_and_index(model, path, _STACK_OF_ANCESTOR)
        if stack not in stacks:
            continue
        children = []
        if "triangle" in kinds:
            children += [("tri_att_start", "triangle"), ("tri_att_end", "triangle")]
        if "single" in kinds:
            children.append(("attention", "single"))  # PairformerLayer only
        for attr, kind in children:
            module = getattr(block, attr, None)
            expected = TriangleAttention if kind == "triangle" else AttentionPairBias
            if not isinstance(module, expected):
                continue  # e.g. already replaced (patch_model checks that first), absent or v1
            node = None if kind == "single" else ("starting" if module.starting else "ending")
            sites.append(
                Site(
                    path=f"{path}.{attr}" if path else attr,
                    parent=block,
                    attr=attr,
                    module=module,
                    kind=kind,
                    node=node,
                    stack=stack,
                    block=index,
                )
            )
    return sites


class BoltzTriangleAttention(PatchedModule):
    """Replaces ``boltz...triangular_attention.attention.TriangleAttention`` (starting or ending
    node); same forward signature."""

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
        use_kernels: bool = False,
    ) -> torch.Tensor:
        # use_kernels: the cuequivariance kernel computes the same function; ignored.
        # mask None: the host uses all ones, i.e. no masking; 0/1 float masks -> bool in our module
        return self._finish(self.flash_bias(x, mask, chunk_size=chunk_size))


class BoltzAttentionPairBias(PatchedModule):
    """Replaces ``boltz.model.layers.attentionv2.AttentionPairBias``; same forward signature."""

    def forward(
        self,
        s: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor,
        k_in: torch.Tensor,
        multiplicity: int = 1,
    ) -> torch.Tensor:
        if k_in is not s or multiplicity != 1:
            # paths the Pairformer never takes: the host's own code, on the same parameters
            return self.host_module(s, z, mask, k_in, multiplicity)
        # the host's attention core runs with CUDA autocast off (the Pairformer layer already
        # turns it off around the whole call and gives fp32 s and z)
        with torch.autocast("cuda", enabled=False):
            return self._finish(self.flash_bias(s, z, mask))


def _triangle(site: Site, mode: str, factor_config: FactorConfig | None, backend: str) -> PatchedModule:
    # the ending module transposes z itself: its bias comes from the transposed z
    node = {"node": "starting"} if site.module.starting else {"node": "ending", "ending_bias": "transposed"}
    ours = build_triangle_attention(
        site,
        node=node,
        bias_linear="linear",
        mode=mode,
        factor_config=factor_config,
        backend=backend,
        host_label="Boltz",
    )
    return BoltzTriangleAttention(site.module, ours, site)


def _single(site: Site, mode: str, factor_config: FactorConfig | None, backend: str) -> PatchedModule:
    host, where = site.module, site.path
    if not host.compute_pair_bias:
        raise UnsupportedModuleError(f"{where}: AttentionPairBias with compute_pair_bias=False is not supported")
    if float(host.inf) < _MIN_SINGLE_INF:
        raise UnsupportedModuleError(
            f"{where}: inf={host.inf:g} < {_MIN_SINGLE_INF:g} (masked keys would keep a weight; the "
            "FlashBias op masks with 1e9)"
        )
    norm_z, linear_z = host.proj_z[0], host.proj_z[1]
    if not isinstance(norm_z, nn.LayerNorm) or not isinstance(linear_z, nn.Linear):
        raise UnsupportedModuleError(f"{where}: proj_z is not (LayerNorm, Linear, Rearrange)")
    c_s, c_z = host.c_s, linear_z.in_features
    ours = build_on_meta(
        FlashBiasAttentionPairBias,
        c_s=c_s,
        c_z=c_z,
        n_heads=host.num_heads,
        head_dim=host.head_dim,
        layer_norm_s=False,
        **projection_biases(host, "proj_{}"),
        layer_norm_eps=float(norm_z.eps),
        backend=backend,
    )
    if norm_z.bias is None:
        ours.layer_norm_z.bias = None
    share_layer_norm(ours.layer_norm_z, norm_z, f"{where}.proj_z.0")
    share_linear(ours.linear_z, linear_z, f"{where}.proj_z.1")
    share_projections(ours, host, "proj_{}", where)
    ours.factor_network = factor_network(factor_config, c_z, host.num_heads, linear_z.weight, "Boltz")
    check_no_meta(ours, where)
    ours.mode = mode
    return BoltzAttentionPairBias(host, ours, site)


# ---------------------------------------------------------------------------------------------
# Diffusion module: kinds "diffusion" (token transformer) and "atom" (atom transformers)

# DiffusionModule.forward's arguments that change between diffusion steps (and multiplicity,
# which AtomDiffusion.sample varies between its chunks of samples within a step: the cached
# [B, H, N, N] bias does not depend on it); the others (trunk outputs, features,
# diffusion_conditioning with every layer's precomputed bias) bound the bias reuse
_VARYING = ("r_noisy", "times", "multiplicity")


def _diffusion_sites(model: nn.Module, stacks, kinds, AttentionPairBias) -> list[Site]:
    """The ``pair_bias_attn`` of every layer of the v2 ``DiffusionTransformer``s: kind "atom" in
    an ``AtomTransformer`` (atom attention encoder / decoder), else "diffusion" (the diffusion
    module's token transformer); stack "diffusion" inside a v2 ``DiffusionModule``, "input" in
    the trunk's ``InputEmbedder`` (its atom encoder, run once per prediction); others (e.g. the
    affinity module's transformer) are not diffusion attentions and are left alone."""
    from boltz.model.modules.transformersv2 import AtomTransformer, DiffusionTransformer

    sites = []
    for path, dt in model.named_modules():
        if not isinstance(dt, DiffusionTransformer) or not dt.pair_bias_attn:
            continue
        chain, m = [model], model  # the modules from the model down to the transformer
        for part in path.split(".") if path else []:
            m = getattr(m, part)
            chain.append(m)
        # the innermost DiffusionModule above it (the model included) bounds the bias reuse
        context = next((mod for mod in reversed(chain[:-1]) if _is_diffusion_module(mod)), None)
        if context is not None:
            stack = "diffusion"
        elif any(type(mod).__name__ == "InputEmbedder" for mod in chain):
            stack = "input"
        else:
            continue
        kind = "atom" if len(chain) >= 2 and isinstance(chain[-2], AtomTransformer) else "diffusion"
        if kind not in kinds or stack not in stacks:
            continue
        for index, layer in enumerate(dt.layers):
            module = getattr(layer, "pair_bias_attn", None)
            if not isinstance(module, AttentionPairBias) or module.compute_pair_bias:
                continue  # already replaced (patch_model checks that first), absent or not given a bias
            prefix = f"{path}.layers.{index}" if path else f"layers.{index}"
            sites.append(
                Site(
                    path=f"{prefix}.pair_bias_attn",
                    parent=layer,
                    attr="pair_bias_attn",
                    module=module,
                    kind=kind,
                    node=None,
                    stack=stack,
                    block=index,
                    context=context,
                )
            )
    return sites


def _is_diffusion_module(module: nn.Module) -> bool:
    # by class and module name: boltz.model.modules.diffusionv2.DiffusionModule (importing it
    # needs einx, which the Pairformer-only path does not)
    cls = type(module)
    return cls.__name__ == "DiffusionModule" and cls.__module__ == "boltz.model.modules.diffusionv2"


class BoltzDiffusionAttention(ScopedPatchedModule):
    """Replaces the ``boltz.model.layers.attentionv2.AttentionPairBias`` (compute_pair_bias=False)
    of a ``DiffusionTransformerLayer`` (token or atom transformer); same forward signature: z is
    the layer's precomputed bias [B, Lq, Lk, H], mask the float key mask [B*m, Lk]."""

    def __init__(self, host_module, flash_bias, site: Site):
        scope = scope_of(site.context, _VARYING) if site.context is not None and flash_bias.cache_bias else None
        super().__init__(host_module, flash_bias, site, scope)

    def forward(
        self,
        s: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor,
        k_in: torch.Tensor,
        multiplicity: int = 1,
    ) -> torch.Tensor:
        # the host adds -inf * (1 - mask) with its 0/1 float masks: a bool key mask here
        key_mask = None if mask is None else mask != 0
        return self.flash_bias(s, k_in, z, key_mask, multiplicity)


def _diffusion(
    site: Site, mode: str, factor_config: FactorConfig | None, backend: str, svd_config: SVDConfig | None
) -> PatchedModule:
    host, where = site.module, site.path
    if float(host.inf) < _MIN_SINGLE_INF:
        raise UnsupportedModuleError(
            f"{where}: inf={host.inf:g} < {_MIN_SINGLE_INF:g} (masked keys would keep a weight; the "
            "FlashBias op masks with 1e9)"
        )
    if mode == "distill" or factor_config is not None:
        raise UnsupportedModuleError(
            f"{where}: Boltz-2 hands its diffusion attentions a precomputed bias, with no pair "
            "representation to feed a factor network: use mode 'exact', or 'lowrank' with SVD factors "
            "(no factor_config)"
        )
    atom = site.kind == "atom"
    if atom:
        # the atom transformer repeats its bias over the samples and windows itself (a fresh
        # tensor every call): the 32 x 128 tiles are read as a dense bias, nothing is cached
        mode = "exact"
    for name in ("proj_q", "proj_k", "proj_v", "proj_g", "proj_o"):
        check_linear(getattr(host, name), f"{where}.{name}")
    ours = build_on_meta(
        FlashBiasPrecomputedBiasAttention,
        c_q=host.c_s,
        n_heads=host.num_heads,
        head_dim=host.head_dim,
        **projection_biases(host, "proj_{}"),
        cache_bias=not atom,
        svd_config=(svd_config or SVDConfig()) if mode == "lowrank" else None,
        backend=backend,
    )
    share_projections(ours, host, "proj_{}", where)
    check_no_meta(ours, where)
    ours.mode = mode
    return BoltzDiffusionAttention(host, ours, site)


def make_replacement(
    site: Site,
    *,
    mode: str,
    factor_config: FactorConfig | None,
    backend: str = "auto",
    svd_config: SVDConfig | None = None,
) -> PatchedModule:
    """The wrapper that replaces ``site.module``, sharing its parameters. ``svd_config``: the
    SVD factors of the lowrank "diffusion" sites."""
    if site.kind in DIFFUSION_KINDS:
        return _diffusion(site, mode, factor_config, backend, svd_config)
    build = _triangle if site.kind == "triangle" else _single
    return build(site, mode, factor_config, backend)


def graph_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose one call is one diffusion step (``patching.cuda_graphs.graph_diffusion``):
    the v2 ``DiffusionModule`` (the score model ``AtomDiffusion.preconditioned_network_forward``
    calls with new ``r_noisy`` / ``times`` per step). Not yet checked on a GPU."""
    return outermost(model, _is_diffusion_module)


def run_trunk_stack(
    stack: nn.Module, s: torch.Tensor, z: torch.Tensor, mask: torch.Tensor, pair_mask: torch.Tensor
) -> None:
    """One call of a trunk stack (``TRUNK_STACK_CLASS``) on batch-of-one inputs: s [1, n, c_s],
    z [1, n, n, c_z], mask [1, n], pair_mask [1, n, n]. Boltz-2's take (s, z, mask, pair_mask)."""
    stack(s, z, mask, pair_mask)


def sample_runner(model: nn.Module) -> tuple[Callable[[str, int], object], str] | None:
    """None: Boltz-2's samples run through its trunk stacks (``run_trunk_stack``); its full model
    needs the Boltz data pipeline's features, which are not made from a bare sequence here."""
    return None


def lean_methods(module: nn.Module) -> dict[str, Callable[..., object]]:
    """None replaced: Boltz-2's confidence module already runs its samples one at a time (its
    predict step calls ``ConfidenceModule`` with ``run_sequentially=True``)."""
    return {}
