"""OpenFold3 (``openfold3`` 0.5.0) adapter.

Every Pairformer-like stack of OpenFold3 runs its pair updates through ``openfold3.core.model.
latent.base_blocks.PairBlock``: the trunk's ``PairFormerStack`` (``PairFormerBlock.pair_stack``),
the MSA module's ``MSAModuleStack`` (``MSAModuleBlock.pair_stack``), the template embedder's
``TemplatePairStack`` (``TemplatePairBlock``, a PairBlock subclass) and the confidence head's
``PairformerEmbedding.pairformer_stack``. A PairBlock holds

* ``tri_att_start`` and ``tri_att_end``: both ``openfold3.core.model.layers.triangular_attention.
  TriangleAttention`` with ``starting=True``. ``PairBlock.tri_att_start_end`` calls
  ``tri_att_start(z, mask=pair_mask)``, then transposes z (``z.transpose(-2, -3)``) and calls
  ``tri_att_end(z^T, mask=pair_mask^T, transpose_bias=True)`` and transposes the result back.
  With ``transpose_bias=True`` the host projects the bias from its (already transposed) input
  x = z^T and permutes it (2, 1, 0): ``bias[h, j, k] = linear_z(LN(x)[k, j]) = linear_z(LN(z)
  [j, k])``. Attention row r of x (= column r of z), query j, key k, in z's terms:
  ``q(z[j, r]) . k(z[k, r]) + b_z[j, k]``, i.e. the ending node with the bias from the
  *untransposed* z[i, k] (AF3's released code; our ``ending_bias="untransposed"``), unlike
  Boltz / Protenix / OpenFold (b[k, i], ``"transposed"``). The wrapper therefore transposes
  its input back to z (a view), runs our ending-node module and transposes the update to the
  host's orientation (a view); the host adds it as before.
  In general the host module's ``starting`` and the call's ``transpose_bias`` give:

      starting  transpose_bias   our module (input / output orientation)
      True      False            node="starting"                              (as given)
      True      True             node="ending", ending_bias="untransposed"    (transposed)
      False     False            node="ending", ending_bias="transposed"      (as given)
      False     True             node="ending", ending_bias="untransposed"    (as given)

  (``starting=False`` is OpenFold3's ``TriangleAttentionEndingNode``, used by no block.) A
  wrapper is built for the ``transpose_bias`` its block passes (False for ``tri_att_start``,
  True for ``tri_att_end``); a call with the other value runs the original host module on the
  same parameters (``last_distill_loss`` is then None).
* ``PairFormerBlock.attn_pair_bias``: ``openfold3.core.model.layers.attention_pair_bias.
  AttentionPairBias`` (gating=True), called as ``attn_pair_bias(a=s, z=z, mask=single_mask,
  use_high_precision_attention=True)``: the token mask masks keys with ``inf * (mask - 1)``.

Parameter mapping (host -> ours; every one shared, not copied):

    TriangleAttention                      FlashBiasTriangleAttention
      layer_norm (weight, bias, eps)         layer_norm
      linear_z      (c_z -> H, no bias)      linear_b
      mha.linear_q / _k / _v (no bias)       linear_q / _k / _v
      mha.linear_g  (no bias)                linear_g   (gate_bias=False)
      mha.linear_o  (no bias)                linear_o   (out_bias=False)
      mha.no_heads, mha.c_hidden (per head)  n_heads, head_dim;  inf must be 1e9

    AttentionPairBias                      FlashBiasAttentionPairBias
      layer_norm_a                           layer_norm_s
      layer_norm_z (with offset)             layer_norm_z
      linear_z      (no bias)                linear_z
      mha.linear_q  (with bias)              linear_q   (q_bias=True)
      mha.linear_k / _v / _g / _o            linear_k / _v / _g / _o (no biases)
      mha.no_heads, mha.c_hidden (per head)  n_heads, head_dim;  inf must be 1e9

(``mha.c_hidden`` is the per-head width, ``TriangleAttention``'s docstring notwithstanding:
``Attention`` builds its projections c -> c_hidden * no_heads.) The bias flags follow the
host's linears, so other init configs map as long as the bias projections have no bias.

Kernel switches: the wrappers keep the host signatures. ``use_deepspeed_evo_attention``,
``use_cueq_triangle_kernels``, ``use_triton_triangle_kernels``, ``use_lma`` and
``use_high_precision_attention`` only choose how the host computes the same function (the
host's ``Attention`` falls back between them by sequence length), which the FlashBias op now
computes: they are accepted and ignored (the host's "choose at most one" ValueError for
combined switches is not reproduced). ``chunk_size`` is the least number of attention rows per op
call (``FlashBiasTriangleAttention.chunk_budget_bytes`` lets more in: the op has no N^3 logits). ``inplace_safe`` only lets the host reuse buffers; the
wrapper returns a fresh update, which the host's callers add in place or not as before. Masks
that broadcast (the host's ``mask.expand``) are expanded to full shape.

Diffusion module (kind "diffusion"): every ``DiffusionTransformerBlock`` of the
``DiffusionModule``'s ``diffusion_transformer`` holds an ``openfold3.core.model.layers.
attention_pair_bias.DiffusionAttentionPairBias`` (global attention, stack "diffusion"), called as
``attention_pair_bias(a=a, z=z, s=s, mask=token_mask, ...)``. Its conventions, kept exactly: the
pair rep arrives already normalised -- ``DiffusionTransformer.layer_norm_z`` (scale, no offset)
runs once before the blocks and the attention has no pair norm of its own (our
``pair_layer_norm=False``), the bias is ``linear_z(z)`` per head; a ``AdaLN`` (AF3 Algorithm 26)
normalises a, conditioned by s: ``sigmoid(linear_g(LN_s(s))) * LN_a(a) + linear_s(LN_s(s))``;
q, k, v, g from the same normalised a; the token mask masks keys with ``inf * (mask - 1)``
(inf = 1e9, our op's key mask); the update is gated by ``sigmoid(linear_ada_out(s))``. Mapped
onto ``FlashBiasDiffusionAttention``:

    DiffusionAttentionPairBias             FlashBiasDiffusionAttention (pair_layer_norm=False)
      layer_norm_a (AdaLN) .layer_norm_a     adaln_a.layer_norm_a (no scale / offset)
                           .layer_norm_s     adaln_a.layer_norm_s (scale only)
                           .linear_g         adaln_a.linear_s       (gate, with bias)
                           .linear_s         adaln_a.linear_nobias_s (shift, no bias)
      linear_z      (no bias)                linear_z
      mha.linear_q / _k / _v / _g / _o       linear_q / _k / _v / _g / _o (q with bias)
      linear_ada_out                         linear_a_last
      mha.no_heads, mha.c_hidden             n_heads, head_dim;  inf must be 1e9

The bias depends only on the trunk's outputs and the input features (OpenFold3's
``DiffusionConditioning`` recomputes the pair conditioning at every step, from the same
inputs, without the noise level): it (or its SVD factors in lowrank mode) is computed at the
first step and reused for the other steps and every sample, within a ``BiasScope`` entered
around every call of the ``DiffusionModule`` (``hosts.call_scope``) with every argument
except ``xl_noisy`` and ``t``, plus the diffusion module's parameters outside its transformer
blocks (the conditioning, the transformer's ``layer_norm_z``). Under ``torch.inference_mode``
(Lightning's default for ``predict``, which OpenFold3's runner uses) the inputs are inference
tensors, whose in-place changes cannot be tracked: by default the bias is then recomputed at
every step (still exact, no reuse); ``torch.no_grad`` keeps the reuse, and so does
``patch_model(..., trust_inference_tensors=True)`` (identity of the inference tensors taken as
proof that they are unchanged; see ``pairformer_fb.modules.bias_cache``).

Atom transformer (kind "atom"): every ``DiffusionTransformerBlock`` of the ``atom_transformer`` of
an ``AtomAttentionEncoder`` / ``AtomAttentionDecoder`` holds an ``openfold3.core.model.layers.
attention_pair_bias.CrossAttentionPairBias`` (local attention, ``n_query`` 32 / ``n_key`` 128),
called as ``attention_pair_bias(a=ql, z=plm, s=cl, mask=atom_mask, use_high_precision_attention=
...)`` with plm the blocked pair rep [*, n_blocks, n_query, n_key, c_atom_pair], normalised once
by the transformer's ``layer_norm_z``. Stack "diffusion" in the ``DiffusionModule`` (its scope,
as above: plm is recomputed every step from the fixed inputs, so the bias is computed at the
first step and reused), stack "input" in the trunk's ``InputEmbedderAllAtom`` (run once per
prediction; no scope). Its conventions, kept exactly by ``FlashBiasDiffusionAttention`` with
``windows="shifted"``, ``cross_attention=True, kv_from_input=True`` and no pair norm:

* two AdaLNs, both on the input a: ``layer_norm_a_q`` for the queries (and the gate),
  ``layer_norm_a_k`` for the keys and values (computed per atom, then gathered into windows);
* key windows formed by a gather: window t centred on query block t, then shifted to lie
  inside each element's n_valid = sum(atom_mask) atoms (``shifted_windows``);
* the mask ``inf * (mask_q * mask_k - 1)`` (inf = 1e9) over queries x keys, added to
  ``linear_z(plm)``; both cached together, per window only ([*, n_blocks * H, 32, 128]);
* the update gated by ``sigmoid(linear_ada_out(s))``.

Rows of masked (padding) query atoms: the host shifts every logit of such a row by -1e9, which
leaves fp32 only the rounding of the sum; ours differs there (a different order of the same
additions). Nothing reads those rows: the keys they would feed are masked, the encoder multiplies
its output by the atom mask and the diffusion module masks its output. Always exact (the
32 x 128 tiles are read as a dense bias; lowrank / distill requests run exact, as Protenix's).

    CrossAttentionPairBias                 FlashBiasDiffusionAttention (windows="shifted")
      layer_norm_a_q (AdaLN)                 adaln_a  (layer_norm_a, layer_norm_s, linear_g ->
                                               linear_s, linear_s -> linear_nobias_s)
      layer_norm_a_k (AdaLN)                 adaln_kv (the same; kv_from_input=True)
      linear_z      (no bias)                linear_z (pair_layer_norm=False)
      mha.linear_q / _k / _v / _g / _o       linear_q / _k / _v / _g / _o
      linear_ada_out                         linear_a_last
      n_query, n_key                         the forward's n_queries, n_keys;  inf must be 1e9

Importing ``openfold3`` imports gemmi at the package level and ml_collections / biotite in the
model's import chain; no environment variable is needed on CPU.
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
from ...modules.diffusion_attention import FlashBiasDiffusionAttention
from ..base import (
    DIFFUSION_KINDS,
    MASK_INF,
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
from ..call_scope import CallScope, ScopedPatchedModule, scope_of

HOST = "openfold3"
PACKAGE = "openfold3"
INSTALL_HINT = (
    "pip install --no-deps openfold3==0.5.0 gemmi ml-collections absl-py biotite "
    "(--no-deps: its pins would replace torch / numpy)"
)
STACKS: tuple[str, ...] = ("pairformer", "msa", "template", "confidence", "diffusion", "input")
# "diffusion" / "input" hold only kinds "diffusion" / "atom", so the default kinds patch the trunk alone
DEFAULT_STACKS: tuple[str, ...] = ("pairformer", "diffusion")
DISTRIBUTION = "openfold3"  # its distribution in the package registry (converted checkpoints record its version)
# state-dict keys that only this host's trunk Pairformer has, after a container's prefix (how
# convert/checkpoint.py tells a checkpoint's host): OpenFold3's blocks hold them under pair_stack / attn_pair_bias
CHECKPOINT_KEYS: re.Pattern[str] = re.compile(r"(?:^|\.)pairformer_stack\.blocks\.\d+\.(?:pair_stack|attn_pair_bias)\.")
TRUNK_STACK_CLASS = "PairFormerStack"  # the class name of its trunk Pairformer stack
# the classes of the host modules a prediction runs only after its diffusion sampling (OpenFold3's auxiliary (confidence) heads, after ``_rollout``'s sampling):
# entering one releases the diffusion attentions' cached biases (patch_model)
AFTER_SAMPLING_CLASSES: tuple[str, ...] = ("AuxiliaryHeadsAllAtom",)

# ancestor class name -> stack name (by name, so that no further openfold3 module is imported)
_STACK_OF_ANCESTOR = {
    "PairformerEmbedding": "confidence",
    "TemplateEmbedderAllAtom": "template",
    "TemplatePairStack": "template",
    "MSAModuleStack": "msa",
    "MSAModuleBlock": "msa",
    "EvoformerStack": "msa",
    "EvoformerBlock": "msa",
}
# PairBlock attribute -> (node in the block, the transpose_bias that PairBlock passes)
_TRIANGLES = (("tri_att_start", "starting", False), ("tri_att_end", "ending", True))


def _host_classes():
    """(PairBlock, PairFormerBlock, TriangleAttention, AttentionPairBias), importing openfold3
    if needed."""
    try:
        from openfold3.core.model.latent.base_blocks import PairBlock
        from openfold3.core.model.latent.pairformer import PairFormerBlock
        from openfold3.core.model.layers.attention_pair_bias import AttentionPairBias
        from openfold3.core.model.layers.triangular_attention import TriangleAttention
    except ImportError as e:
        raise ImportError(
            f"host 'openfold3' needs the openfold3 package, which failed to import ({e}): {INSTALL_HINT}"
        ) from e
    return PairBlock, PairFormerBlock, TriangleAttention, AttentionPairBias


def find_sites(model: nn.Module, *, stacks: Sequence[str], kinds: Sequence[str]) -> list[Site]:
    """The diffusion transformer's attentions (kind "diffusion", stack "diffusion") and the atom
    transformers' (kind "atom", stack "diffusion" or "input"), in model order, then the triangle
    attentions (kind "triangle") of every PairBlock and the single attentions ("single") of
    every PairFormerBlock of the selected stacks, in the order the blocks run them (a
    PairFormerBlock's triangle attentions, then its single attention)."""
    PairBlock, PairFormerBlock, TriangleAttention, AttentionPairBias = _host_classes()
    sites: list[Site] = _diffusion_sites(model, stacks, kinds) if set(kinds) & set(DIFFUSION_KINDS) else []
    done: set[int] = set()  # PairBlocks already handled with their PairFormerBlock

    def triangles(pair_block: nn.Module, path: str, stack: str, index: int) -> None:
        done.add(id(pair_block))
        if "triangle" not in kinds:
            return
        for attr, node, _ in _TRIANGLES:
            module = getattr(pair_block, attr, None)
            if isinstance(module, TriangleAttention):  # else e.g. already replaced
                sites.append(
                    Site(
                        path=f"{path}.{attr}" if path else attr,
                        parent=pair_block,
                        attr=attr,
                        module=module,
                        kind="triangle",
                        node=node,
                        stack=stack,
                        block=index,
                    )
                )

    for path, block in model.named_modules():
        if isinstance(block, PairFormerBlock):
            stack, index = stack_and_index(model, path, _STACK_OF_ANCESTOR)
            if stack not in stacks:
                continue
            pair_block = getattr(block, "pair_stack", None)
            if isinstance(pair_block, PairBlock):
                triangles(pair_block, f"{path}.pair_stack" if path else "pair_stack", stack, index)
            module = getattr(block, "attn_pair_bias", None)
            if "single" in kinds and isinstance(module, AttentionPairBias):
                sites.append(
                    Site(
                        path=f"{path}.attn_pair_bias" if path else "attn_pair_bias",
                        parent=block,
                        attr="attn_pair_bias",
                        module=module,
                        kind="single",
                        node=None,
                        stack=stack,
                        block=index,
                    )
                )
        elif isinstance(block, PairBlock) and id(block) not in done:
            stack, index = stack_and_index(model, path, _STACK_OF_ANCESTOR)
            if stack in stacks:
                triangles(block, path, stack, index)
    return sites


def _full_mask(mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    if mask is None or mask.shape == shape:
        return mask
    return mask.expand(shape)


class OpenFold3TriangleAttention(PatchedModule):
    """Replaces ``openfold3...triangular_attention.TriangleAttention``; same forward signature."""

    def __init__(self, host_module, flash_bias, site, *, transpose_bias: bool, transpose_io: bool):
        super().__init__(host_module, flash_bias, site)
        self.transpose_bias = transpose_bias  # the value it was built for (its block's)
        self.transpose_io = transpose_io  # our module runs on the host input's transpose

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        transpose_bias: bool = False,
        chunk_size: int | None = None,
        use_deepspeed_evo_attention: bool = False,
        use_cueq_triangle_kernels: bool = False,
        use_triton_triangle_kernels: bool = False,
        use_lma: bool = False,
        inplace_safe: bool = False,
    ) -> torch.Tensor:
        if bool(transpose_bias) != self.transpose_bias:
            # not the call its block makes: the host's own code, on the same parameters
            self.last_distill_loss = self.last_distill_sample = None
            return self.host_module(
                x,
                mask,
                transpose_bias,
                chunk_size,
                use_deepspeed_evo_attention,
                use_cueq_triangle_kernels,
                use_triton_triangle_kernels,
                use_lma,
                inplace_safe,
            )
        # kernel switches: the same function (see the module docstring); mask None: no masking
        mask = _full_mask(mask, x.shape[:-1])
        if self.transpose_io:
            x = x.transpose(-2, -3)
            mask = mask.transpose(-1, -2) if mask is not None else None
        out = self._finish(self.flash_bias(x, mask, chunk_size=chunk_size))
        return out.transpose(-2, -3) if self.transpose_io else out


class OpenFold3AttentionPairBias(PatchedModule):
    """Replaces ``openfold3...attention_pair_bias.AttentionPairBias``; same forward signature."""

    def forward(
        self,
        a: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        use_deepspeed_evo_attention: bool = False,
        use_cueq_triangle_kernels: bool = False,
        use_triton_triangle_kernels: bool = False,
        use_lma: bool = False,
        use_high_precision_attention: bool = False,
    ) -> torch.Tensor:
        # kernel / precision switches: the same function (see the module docstring)
        return self._finish(self.flash_bias(a, z, _full_mask(mask, a.shape[:-1])))


def _triangle(site: Site, mode: str, factor_config: FactorConfig | None, backend: str) -> PatchedModule:
    transpose_bias = dict((attr, tb) for attr, _, tb in _TRIANGLES)[site.attr]
    starting = bool(site.module.starting)
    if starting and not transpose_bias:
        node = {"node": "starting"}
    elif not starting and not transpose_bias:
        node = {"node": "ending", "ending_bias": "transposed"}
    else:
        node = {"node": "ending", "ending_bias": "untransposed"}
    ours = build_triangle_attention(
        site,
        node=node,
        bias_linear="linear_z",
        mode=mode,
        factor_config=factor_config,
        backend=backend,
        host_label="OpenFold3",
    )
    return OpenFold3TriangleAttention(
        site.module, ours, site, transpose_bias=transpose_bias, transpose_io=starting and transpose_bias
    )


def _single(site: Site, mode: str, factor_config: FactorConfig | None, backend: str) -> PatchedModule:
    host, where = site.module, site.path
    mha = host.mha
    if mha.linear_g is None:
        raise UnsupportedModuleError(f"{where}: single attention without gating is not supported")
    if float(host.inf) != MASK_INF:
        raise UnsupportedModuleError(f"{where}: inf={host.inf:g} (the FlashBias op masks with 1e9)")
    for name in ("linear_z", "mha.linear_q", "mha.linear_k", "mha.linear_v", "mha.linear_g", "mha.linear_o"):
        check_linear(host.get_submodule(name), f"{where}.{name}")
    if not (mha.c_q == mha.c_k == mha.c_v):
        raise UnsupportedModuleError(
            f"{where}: c_q, c_k, c_v = {mha.c_q}, {mha.c_k}, {mha.c_v} (self-attention on one width expected)"
        )
    c_s, c_z = mha.c_q, host.linear_z.in_features
    eps_s, eps_z = float(host.layer_norm_a.eps), float(host.layer_norm_z.eps)
    if eps_s != eps_z:
        raise UnsupportedModuleError(
            f"{where}: different epsilons of layer_norm_a ({eps_s}) and layer_norm_z ({eps_z})"
        )
    ours = build_on_meta(
        FlashBiasAttentionPairBias,
        c_s=c_s,
        c_z=c_z,
        n_heads=mha.no_heads,
        head_dim=mha.c_hidden,
        layer_norm_s=True,
        **projection_biases(host, "mha.linear_{}"),
        layer_norm_eps=eps_s,
        backend=backend,
    )
    assert ours.layer_norm_s is not None  # built with layer_norm_s=True
    share_layer_norm(ours.layer_norm_s, host.layer_norm_a, f"{where}.layer_norm_a")
    share_layer_norm(ours.layer_norm_z, host.layer_norm_z, f"{where}.layer_norm_z")
    share_linear(ours.linear_z, host.linear_z, f"{where}.linear_z")
    share_projections(ours, host, "mha.linear_{}", where)
    ours.factor_network = factor_network(factor_config, c_z, mha.no_heads, host.linear_z.weight, "OpenFold3")
    check_no_meta(ours, where)
    ours.mode = mode
    return OpenFold3AttentionPairBias(host, ours, site)


def _diffusion_sites(model: nn.Module, stacks, kinds) -> list[Site]:
    """The attention of every DiffusionTransformerBlock: a DiffusionAttentionPairBias (kind
    "diffusion", stack "diffusion") or a CrossAttentionPairBias (kind "atom": stack "input" in
    the InputEmbedderAllAtom, else "diffusion"), each with the innermost DiffusionModule above it
    as its context."""
    from openfold3.core.model.layers.attention_pair_bias import CrossAttentionPairBias, DiffusionAttentionPairBias
    from openfold3.core.model.layers.diffusion_transformer import DiffusionTransformerBlock
    from openfold3.core.model.structure.diffusion_module import DiffusionModule

    sites = []
    for path, block in model.named_modules():
        if not isinstance(block, DiffusionTransformerBlock):
            continue
        module = getattr(block, "attention_pair_bias", None)
        if isinstance(module, DiffusionAttentionPairBias):
            kind = "diffusion"
        elif isinstance(module, CrossAttentionPairBias):
            kind = "atom"
        else:
            continue  # already replaced (patch_model checks that first) or absent
        chain, m = [model], model
        for part in path.split(".") if path else []:
            m = getattr(m, part)
            chain.append(m)
        context = next((mod for mod in reversed(chain) if isinstance(mod, DiffusionModule)), None)
        in_input_embedder = any(type(mod).__name__ == "InputEmbedderAllAtom" for mod in chain)
        stack = "input" if kind == "atom" and context is None and in_input_embedder else "diffusion"
        if kind not in kinds or stack not in stacks:
            continue
        _, index = stack_and_index(model, path, {})
        sites.append(
            Site(
                path=f"{path}.attention_pair_bias" if path else "attention_pair_bias",
                parent=block,
                attr="attention_pair_bias",
                module=module,
                kind=kind,
                node=None,
                stack=stack,
                block=index,
                context=context,
            )
        )
    return sites


def _scope_of(module: nn.Module) -> CallScope:
    """The CallScope of a DiffusionModule: every argument except the noisy positions and the
    noise level, plus the parameters the biases can depend on upstream of the attentions
    (conditioning, the transformer's pair norm; the attentions' own bias parameters are checked
    by each)."""
    from openfold3.core.model.layers.diffusion_transformer import DiffusionTransformerBlock

    inner = {id(p) for m in module.modules() if isinstance(m, DiffusionTransformerBlock) for p in m.parameters()}
    return scope_of(module, ("xl_noisy", "t"), [p for p in module.parameters() if id(p) not in inner])


class OpenFold3DiffusionAttentionPairBias(ScopedPatchedModule):
    """Replaces ``openfold3...attention_pair_bias.DiffusionAttentionPairBias``; same forward
    signature."""

    def __init__(self, host_module, flash_bias, site: Site):
        super().__init__(host_module, flash_bias, site, _scope_of(site.context) if site.context is not None else None)

    def forward(
        self,
        a: torch.Tensor,
        z: torch.Tensor,
        s: torch.Tensor,
        mask: torch.Tensor | None = None,
        use_deepspeed_evo_attention: bool = False,
        use_cueq_triangle_kernels: bool = False,
        use_triton_triangle_kernels: bool = False,
        use_lma: bool = False,
        use_high_precision_attention: bool = False,
    ) -> torch.Tensor:
        # kernel / precision switches: the same function (see the module docstring)
        return self._finish(self.flash_bias(a, s, z, key_mask=mask))


def _diffusion(
    site: Site, mode: str, factor_config: FactorConfig | None, backend: str, svd_config: SVDConfig | None
) -> PatchedModule:
    host, where = site.module, site.path
    mha = host.mha
    if mha.linear_g is None:
        raise UnsupportedModuleError(f"{where}: attention without gating is not supported")
    if float(host.inf) != MASK_INF:
        raise UnsupportedModuleError(f"{where}: inf={host.inf:g} (the FlashBias op masks with 1e9)")
    if not (mha.c_q == mha.c_k == mha.c_v):
        raise UnsupportedModuleError(
            f"{where}: c_q, c_k, c_v = {mha.c_q}, {mha.c_k}, {mha.c_v} (self-attention on one width expected)"
        )
    names = [
        "linear_z",
        "linear_ada_out",
        "layer_norm_a.linear_g",
        "layer_norm_a.linear_s",
        "mha.linear_q",
        "mha.linear_k",
        "mha.linear_v",
        "mha.linear_g",
        "mha.linear_o",
    ]
    for name in names:
        check_linear(host.get_submodule(name), f"{where}.{name}")
    adaln = host.layer_norm_a
    ours = build_on_meta(
        FlashBiasDiffusionAttention,
        c_a=mha.c_q,
        c_s=host.linear_ada_out.in_features,
        c_z=host.linear_z.in_features,
        n_heads=mha.no_heads,
        head_dim=mha.c_hidden,
        pair_layer_norm=False,
        **projection_biases(host, "mha.linear_{}"),
        svd_config=svd_config if mode == "lowrank" and factor_config is None else None,
        backend=backend,
    )
    share_layer_norm(ours.adaln_a.layer_norm_a, adaln.layer_norm_a, f"{where}.layer_norm_a.layer_norm_a")
    share_layer_norm(ours.adaln_a.layer_norm_s, adaln.layer_norm_s, f"{where}.layer_norm_a.layer_norm_s")
    share_linear(ours.adaln_a.linear_s, adaln.linear_g, f"{where}.layer_norm_a.linear_g")
    share_linear(ours.adaln_a.linear_nobias_s, adaln.linear_s, f"{where}.layer_norm_a.linear_s")
    share_linear(ours.linear_z, host.linear_z, f"{where}.linear_z")
    share_linear(ours.linear_a_last, host.linear_ada_out, f"{where}.linear_ada_out")
    share_projections(ours, host, "mha.linear_{}", where)
    ours.factor_network = factor_network(
        factor_config, host.linear_z.in_features, mha.no_heads, host.linear_z.weight, "OpenFold3"
    )
    check_no_meta(ours, where)
    ours.mode = mode
    return OpenFold3DiffusionAttentionPairBias(host, ours, site)


class OpenFold3CrossAttentionPairBias(ScopedPatchedModule):
    """Replaces ``openfold3...attention_pair_bias.CrossAttentionPairBias`` (the atom transformer's
    local attention); same forward signature."""

    def __init__(self, host_module, flash_bias, site: Site):
        super().__init__(host_module, flash_bias, site, _scope_of(site.context) if site.context is not None else None)
        self.n_query, self.n_key = int(host_module.n_query), int(host_module.n_key)

    def forward(
        self,
        a: torch.Tensor,
        z: torch.Tensor,
        s: torch.Tensor,
        mask: torch.Tensor | None = None,
        use_high_precision_attention: bool = False,
    ) -> torch.Tensor:
        # use_high_precision_attention: the op accumulates in fp32 (see the module docstring)
        return self._finish(self.flash_bias(a, s, z, n_queries=self.n_query, n_keys=self.n_key, atom_mask=mask))


def _atom(site: Site, backend: str) -> PatchedModule:
    host, where = site.module, site.path
    mha = host.mha
    if mha.linear_g is None:
        raise UnsupportedModuleError(f"{where}: attention without gating is not supported")
    if float(host.inf) != MASK_INF:
        raise UnsupportedModuleError(f"{where}: inf={host.inf:g} (the atom mask is reproduced with 1e9)")
    if not (mha.c_q == mha.c_k == mha.c_v):
        raise UnsupportedModuleError(f"{where}: c_q, c_k, c_v = {mha.c_q}, {mha.c_k}, {mha.c_v} (one width expected)")
    n_query, n_key = host.n_query, host.n_key
    if not n_query or not n_key or n_query % 2 or n_key % 2 or n_key < n_query:
        raise UnsupportedModuleError(f"{where}: n_query={n_query}, n_key={n_key} (even n_key >= n_query expected)")
    names = [
        "linear_z",
        "linear_ada_out",
        "mha.linear_q",
        "mha.linear_k",
        "mha.linear_v",
        "mha.linear_g",
        "mha.linear_o",
    ] + [f"{norm}.{lin}" for norm in ("layer_norm_a_q", "layer_norm_a_k") for lin in ("linear_g", "linear_s")]
    for name in names:
        check_linear(host.get_submodule(name), f"{where}.{name}")
    ours = build_on_meta(
        FlashBiasDiffusionAttention,
        c_a=mha.c_q,
        c_s=host.linear_ada_out.in_features,
        c_z=host.linear_z.in_features,
        n_heads=mha.no_heads,
        head_dim=mha.c_hidden,
        pair_layer_norm=False,
        cross_attention=True,
        kv_from_input=True,
        windows="shifted",
        **projection_biases(host, "mha.linear_{}"),
        backend=backend,
    )
    assert ours.adaln_kv is not None  # built with cross_attention=True
    for dst, name in ((ours.adaln_a, "layer_norm_a_q"), (ours.adaln_kv, "layer_norm_a_k")):
        src = getattr(host, name)
        share_layer_norm(dst.layer_norm_a, src.layer_norm_a, f"{where}.{name}.layer_norm_a")
        share_layer_norm(dst.layer_norm_s, src.layer_norm_s, f"{where}.{name}.layer_norm_s")
        share_linear(dst.linear_s, src.linear_g, f"{where}.{name}.linear_g")
        share_linear(dst.linear_nobias_s, src.linear_s, f"{where}.{name}.linear_s")
    share_linear(ours.linear_z, host.linear_z, f"{where}.linear_z")
    share_linear(ours.linear_a_last, host.linear_ada_out, f"{where}.linear_ada_out")
    share_projections(ours, host, "mha.linear_{}", where)
    check_no_meta(ours, where)
    ours.mode = "exact"  # local tiles: a dense bias read once, nothing to factor
    return OpenFold3CrossAttentionPairBias(host, ours, site)


def make_replacement(
    site: Site,
    *,
    mode: str,
    factor_config: FactorConfig | None,
    backend: str = "auto",
    svd_config: SVDConfig | None = None,
) -> PatchedModule:
    """The wrapper that replaces ``site.module``, sharing its parameters. ``svd_config``: the
    SVD factors of the lowrank "diffusion" sites given no ``factor_config``; "atom" sites always
    run exact."""
    if site.kind == "atom":
        return _atom(site, backend)
    if site.kind == "diffusion":
        return _diffusion(site, mode, factor_config, backend, svd_config)
    build = _triangle if site.kind == "triangle" else _single
    return build(site, mode, factor_config, backend)


def graph_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose one call is one diffusion step (``patching.cuda_graphs.graph_diffusion``):
    every ``DiffusionModule`` (called per step with new ``xl_noisy`` / ``t``). Not yet checked on
    a GPU."""
    from openfold3.core.model.structure.diffusion_module import DiffusionModule

    return outermost(model, lambda m: isinstance(m, DiffusionModule))


def run_trunk_stack(
    stack: nn.Module, s: torch.Tensor, z: torch.Tensor, mask: torch.Tensor, pair_mask: torch.Tensor
) -> None:
    """One call of a trunk stack (``TRUNK_STACK_CLASS``) on batch-of-one inputs: s [1, n, c_s],
    z [1, n, n, c_z], mask [1, n], pair_mask [1, n, n]. OpenFold3's take (s, z, single_mask, pair_mask)."""
    stack(s, z, mask, pair_mask)


def sample_runner(model: nn.Module) -> tuple[Callable[[str, int], object], str] | None:
    """``(run(sequence, seed), what it runs)`` when ``model`` is a full ``OpenFold3`` model: its
    forward on synthetic features around the sequence (``featurize.synthetic_features``); else None."""
    if type(model).__name__ != "OpenFold3":
        return None
    from .featurize import synthetic_features

    device = next(model.parameters()).device

    def run(sequence: str, seed: int) -> object:
        return model({k: v.to(device) for k, v in synthetic_features(sequence, seed=seed).items()})

    return run, "full OpenFold3 model on synthetic features of the sample sequences"


def lean_methods(module: nn.Module) -> dict[str, Callable[..., object]]:
    """None replaced: OpenFold3's modules run as the host wrote them."""
    return {}
