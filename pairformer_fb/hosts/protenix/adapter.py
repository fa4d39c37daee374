"""Protenix (2.0.0) adapter.

Every Pairformer-like stack of Protenix is made of ``protenix.model.modules.pairformer.
PairformerBlock``: the trunk's ``PairformerStack``, the MSA module's ``MSABlock.pair_stack``,
the template embedder's and the confidence head's ``PairformerStack``. A block holds

* ``tri_att_start`` and ``tri_att_end``: both ``protenix.model.triangular.triangular.
  TriangleAttention`` with ``starting=True``. The block itself transposes z (and the pair mask)
  around ``tri_att_end`` (``z = z.transpose(-2, -3).contiguous()``), so the ending node runs the
  starting-node code on the transposed z and its bias is projected from the transposed z
  (our ``ending_bias="transposed"`` convention). Both map to our starting-node module; a
  ``TriangleAttention`` with ``starting=False`` (``TriangleAttentionEndingNode``, used by no
  Protenix block) would map to our ``node="ending", ending_bias="transposed"``.
* ``attention_pair_bias`` (when c_s > 0): ``protenix.model.modules.transformer.
  AttentionPairBias`` with ``has_s=False``, called without a mask (Protenix's Pairformer single
  attention is unmasked).

Parameter mapping (host -> ours; every one shared, not copied):

    TriangleAttention                      FlashBiasTriangleAttention
      layer_norm (weight, bias, eps)         layer_norm
      linear        (c_z -> H, no bias)      linear_b
      mha.linear_q / _k / _v (no bias)       linear_q / _k / _v
      mha.linear_g  (no bias)                linear_g   (gate_bias=False)
      mha.linear_o  (no bias)                linear_o   (out_bias=False)
      mha.no_heads, mha.c_hidden (per head)  n_heads, head_dim;  inf must be 1e9

    AttentionPairBias (has_s=False)        FlashBiasAttentionPairBias
      layernorm_a                            layer_norm_s
      layernorm_z (offset in the Pairformer) layer_norm_z
      linear_nobias_z                        linear_z
      attention.linear_q (with bias)         linear_q   (q_bias=True)
      attention.linear_k / _v / _g / _o      linear_k / _v / _g / _o (no biases)
      attention.num_heads, .c_hidden         n_heads, head_dim

Diffusion module (kinds "diffusion" and "atom"): every ``DiffusionTransformerBlock`` holds an
``attention_pair_bias``, an ``AttentionPairBias`` with ``has_s=True`` (adaptive layer norm on a,
conditioned by s, and the output gate ``sigmoid(linear_a_last(s))``): kind "diffusion" in the
diffusion module's ``diffusion_transformer`` (global attention; its bias from the conditioned
pair rep, also in the ``enable_efficient_fusion`` form), kind "atom" in the ``AtomTransformer``
of the atom attention encoder / decoder (``cross_attention_mode=True``, local attention with a
trunked bias). Stack "diffusion" (the ``DiffusionModule``'s) or "input" (the input embedder's
atom attention encoder, run once per prediction). Mapped onto ``FlashBiasDiffusionAttention``:

    AttentionPairBias (has_s=True)         FlashBiasDiffusionAttention
      layernorm_a (AdaptiveLayerNorm)        adaln_a: layer_norm_a, layer_norm_s, linear_s,
                                               linear_nobias_s
      layernorm_kv (cross attention)         adaln_kv (same)
      layernorm_z, linear_nobias_z           layer_norm_z, linear_z
      attention.linear_q / _k / _v / _g / _o linear_q / _k / _v / _g / _o
      linear_a_last                          linear_a_last

The bias of these attentions depends only on the trunk's outputs and the input features, not on
the noisy coordinates or the noise level: it (or its SVD factors in lowrank mode) is computed at
the first diffusion step and reused for the others and for every sample. The reuse is bounded by
a ``BiasScope`` entered around every call of the ``DiffusionModule`` (forward hooks installed by
``patch_model``, removed by ``unpatch_model``) with every argument except ``x_noisy`` and
``t_hat_noise_level``, plus the diffusion module's parameters outside its transformers: any of
them replaced or modified in place starts a new generation (the bias is recomputed).

Kernel switches: the wrappers keep the host signatures. ``triangle_attention`` (the host's
"torch" / "triattention" / "deepspeed" / "cuequivariance" kernel choice) is checked as the
host checks it and otherwise ignored: every choice computes the same function, which the
FlashBias op now computes. ``chunk_size`` bounds the attention rows per op call, as the host's
chunking does. ``inplace_safe`` only lets the host reuse buffers; the wrapper returns a fresh
update, which the host's callers add in place or not as before. A single-attention call with
local attention (``n_queries`` / ``n_keys``) or ``enable_efficient_fusion`` (neither is used by
the Pairformer) runs the original host module.

Importing protenix on a machine without CUDA needs ``LAYERNORM_TYPE=torch`` in the environment
(otherwise it tries to compile its fused CUDA layer norm at import).
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
from . import lean

HOST = "protenix"
PACKAGE = "protenix"
INSTALL_HINT = (
    "pip install --no-deps protenix==2.0.0 and the packages of requirements-hosts.txt "
    "(pip install --no-deps -r requirements-hosts.txt); without CUDA set LAYERNORM_TYPE=torch"
)
STACKS: tuple[str, ...] = ("pairformer", "msa", "template", "confidence", "diffusion", "input")
# "diffusion" holds only kinds "diffusion" / "atom", so the default kinds patch the trunk alone
DEFAULT_STACKS: tuple[str, ...] = ("pairformer", "diffusion")
DISTRIBUTION = "protenix"  # its distribution in the package registry (converted checkpoints record its version)
# state-dict keys that only this host's trunk Pairformer has, after a container's prefix (how
# convert/checkpoint.py tells a checkpoint's host): Protenix's blocks hold the attentions directly
CHECKPOINT_KEYS: re.Pattern[str] = re.compile(
    r"(?:^|\.)pairformer_stack\.blocks\.\d+\."
    r"(?:tri_att_start|tri_att_end|attention_pair_bias|tri_mul_out|tri_mul_in)\."
)
TRUNK_STACK_CLASS = "PairformerStack"  # the class name of its trunk Pairformer stack
# the classes of the host modules a prediction runs only after its diffusion sampling (Protenix's confidence head (``Protenix.run_confidence_head``)):
# entering one releases the diffusion attentions' cached biases (patch_model)
AFTER_SAMPLING_CLASSES: tuple[str, ...] = ("ConfidenceHead",)

# the host's triangle_attention choices (asserted in protenix.model.triangular.layers.Attention)
TRIANGLE_KERNELS = ("torch", "deepspeed", "triattention", "cuequivariance")
# ancestor class name -> stack name (by name, so that no further protenix module is imported)
_STACK_OF_ANCESTOR = {
    "ConfidenceHead": "confidence",
    "TemplateEmbedder": "template",
    "MSAModule": "msa",
    "MSABlock": "msa",
}


def _host_classes():
    """(PairformerBlock, TriangleAttention, AttentionPairBias), importing protenix if needed."""
    try:
        from protenix.model.modules.pairformer import PairformerBlock
        from protenix.model.modules.transformer import AttentionPairBias
        from protenix.model.triangular.triangular import TriangleAttention
    except ImportError as e:
        raise ImportError(
            f"host 'protenix' needs the protenix package, which failed to import ({e}): {INSTALL_HINT}"
        ) from e
    except OSError as e:  # its fused layer norm's CUDA build, attempted at import
        raise ImportError(
            f"importing protenix failed ({e}); on a machine without CUDA set "
            f"LAYERNORM_TYPE=torch before importing it. {INSTALL_HINT}"
        ) from e
    return PairformerBlock, TriangleAttention, AttentionPairBias


def find_sites(model: nn.Module, *, stacks: Sequence[str], kinds: Sequence[str]) -> list[Site]:
    """The triangle attentions (kind "triangle") and single attentions ("single") of every
    PairformerBlock of the selected stacks, then the conditioned attentions of the diffusion
    transformers ("diffusion") and atom transformers ("atom"), in model order."""
    PairformerBlock, TriangleAttention, AttentionPairBias = _host_classes()
    sites = []
    if any(k in kinds for k in DIFFUSION_KINDS):
        sites += _diffusion_sites(model, stacks, kinds, AttentionPairBias)
    for path, block in model.named_modules():
        if not isinstance(block, PairformerBlock):
            continue
        stack, index = stack_and_index(model, path, _STACK_OF_ANCESTOR)
        if stack not in stacks:
            continue
        children: list[tuple[str, str, str | None]] = []  # (attribute, kind, node)
        if "triangle" in kinds:
            children += [("tri_att_start", "triangle", "starting"), ("tri_att_end", "triangle", "ending")]
        if "single" in kinds and getattr(block, "c_s", 0) > 0:
            children.append(("attention_pair_bias", "single", None))
        for attr, kind, node in children:
            module = getattr(block, attr, None)
            expected = TriangleAttention if kind == "triangle" else AttentionPairBias
            if not isinstance(module, expected):
                continue  # e.g. already replaced (patch_model checks that first) or absent
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


class ProtenixTriangleAttention(PatchedModule):
    """Replaces ``protenix...triangular.TriangleAttention``; same forward signature."""

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
        triangle_attention: str = "torch",
        inplace_safe: bool = False,
    ) -> torch.Tensor:
        if triangle_attention not in TRIANGLE_KERNELS:
            raise ValueError(f"triangle_attention must be one of {TRIANGLE_KERNELS}, got {triangle_attention!r}")
        # mask None: the host uses all ones, i.e. no masking; 0/1 float masks -> bool in our module
        return self._finish(self.flash_bias(x, mask, chunk_size=chunk_size))


class ProtenixAttentionPairBias(PatchedModule):
    """Replaces ``protenix...transformer.AttentionPairBias`` (has_s=False); same signature."""

    def forward(
        self,
        a: torch.Tensor,
        s: torch.Tensor | None,
        z: torch.Tensor,
        n_queries: int | None = None,
        n_keys: int | None = None,
        inplace_safe: bool = False,
        chunk_size: int | None = None,
        enable_efficient_fusion: bool = False,
    ) -> torch.Tensor:
        if (n_queries and n_keys) or enable_efficient_fusion:
            # paths the Pairformer never takes: the host's own code, on the same parameters
            return self.host_module(a, s, z, n_queries, n_keys, inplace_safe, chunk_size, enable_efficient_fusion)
        # has_s=False: the host ignores s; the Pairformer's single attention has no mask
        return self._finish(self.flash_bias(a, z, None))


def _triangle(site: Site, mode: str, factor_config: FactorConfig | None, backend: str) -> PatchedModule:
    # Protenix's blocks transpose z around tri_att_end themselves: both map to "starting"
    node = {"node": "starting"} if site.module.starting else {"node": "ending", "ending_bias": "transposed"}
    ours = build_triangle_attention(
        site,
        node=node,
        bias_linear="linear",
        mode=mode,
        factor_config=factor_config,
        backend=backend,
        host_label="Protenix",
    )
    return ProtenixTriangleAttention(site.module, ours, site)


def _single(site: Site, mode: str, factor_config: FactorConfig | None, backend: str) -> PatchedModule:
    host, where = site.module, site.path
    att = host.attention
    if host.has_s or host.cross_attention_mode:
        raise UnsupportedModuleError(f"{where}: AttentionPairBias with has_s or cross_attention_mode is not supported")
    if att.linear_g is None:
        raise UnsupportedModuleError(f"{where}: single attention without gating is not supported")
    for name in (
        "linear_nobias_z",
        "attention.linear_q",
        "attention.linear_k",
        "attention.linear_v",
        "attention.linear_g",
        "attention.linear_o",
    ):
        check_linear(host.get_submodule(name), f"{where}.{name}")
    c_s, c_z = att.c_q, host.linear_nobias_z.in_features
    eps_s, eps_z = float(host.layernorm_a.eps), float(host.layernorm_z.eps)
    if eps_s != eps_z:
        raise UnsupportedModuleError(f"{where}: different epsilons of layernorm_a ({eps_s}) and layernorm_z ({eps_z})")
    ours = build_on_meta(
        FlashBiasAttentionPairBias,
        c_s=c_s,
        c_z=c_z,
        n_heads=att.num_heads,
        head_dim=att.c_hidden,
        layer_norm_s=True,
        **projection_biases(host, "attention.linear_{}"),
        layer_norm_eps=eps_s,
        backend=backend,
    )
    assert ours.layer_norm_s is not None  # built with layer_norm_s=True
    share_layer_norm(ours.layer_norm_s, host.layernorm_a, f"{where}.layernorm_a")
    share_layer_norm(ours.layer_norm_z, host.layernorm_z, f"{where}.layernorm_z")
    share_linear(ours.linear_z, host.linear_nobias_z, f"{where}.linear_nobias_z")
    _share_attention(ours, host, att, where, factor_config, c_z, mode)
    return ProtenixAttentionPairBias(host, ours, site)


def _share_attention(ours, host, att, where: str, factor_config, c_z: int, mode: str) -> None:
    """The part every Protenix AttentionPairBias mapping shares: the attention's q / k / v / g / o
    projections, the factor network (initialised from the bias projection), the mode."""
    share_projections(ours, host, "attention.linear_{}", where)
    ours.factor_network = factor_network(factor_config, c_z, att.num_heads, host.linear_nobias_z.weight, "Protenix")
    check_no_meta(ours, where)
    ours.mode = mode


def _diffusion_sites(model: nn.Module, stacks, kinds, AttentionPairBias) -> list[Site]:
    from protenix.model.modules.diffusion import DiffusionModule
    from protenix.model.modules.transformer import AtomTransformer, DiffusionTransformer

    sites = []
    for path, dt in model.named_modules():
        if not isinstance(dt, DiffusionTransformer):
            continue
        chain, m = [model], model  # the modules from the model down to the transformer
        for part in path.split(".") if path else []:
            m = getattr(m, part)
            chain.append(m)
        # the innermost DiffusionModule above it (the model included) bounds the bias reuse
        context = next((mod for mod in reversed(chain[:-1]) if isinstance(mod, DiffusionModule)), None)
        kind = "atom" if len(chain) >= 2 and isinstance(chain[-2], AtomTransformer) else "diffusion"
        in_input_embedder = any(type(mod).__name__ == "InputFeatureEmbedder" for mod in chain)
        stack = "input" if context is None and in_input_embedder else "diffusion"
        if kind not in kinds or stack not in stacks:
            continue
        for index, block in enumerate(dt.blocks):
            module = getattr(block, "attention_pair_bias", None)
            if not isinstance(module, AttentionPairBias):
                continue  # already replaced (patch_model checks that first) or absent
            prefix = f"{path}.blocks.{index}" if path else f"blocks.{index}"
            sites.append(
                Site(
                    path=f"{prefix}.attention_pair_bias",
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
    """The CallScope of a DiffusionModule: every argument except the noisy coordinates and the
    noise level, plus the parameters the biases can depend on upstream (conditioning, atom pair
    embedding: the module's parameters outside its transformers; the attentions' own bias
    parameters are checked by each module)."""
    from protenix.model.modules.transformer import DiffusionTransformer

    inner = {id(p) for m in module.modules() if isinstance(m, DiffusionTransformer) for p in m.parameters()}
    return scope_of(module, ("x_noisy", "t_hat_noise_level"), [p for p in module.parameters() if id(p) not in inner])


class ProtenixDiffusionAttentionPairBias(ScopedPatchedModule):
    """Replaces ``protenix...transformer.AttentionPairBias`` with has_s=True (the diffusion and
    atom transformers' blocks); same forward signature."""

    def __init__(self, host_module, flash_bias, site: Site):
        super().__init__(host_module, flash_bias, site, _scope_of(site.context) if site.context is not None else None)

    def forward(
        self,
        a: torch.Tensor,
        s: torch.Tensor,
        z: torch.Tensor,
        n_queries: int | None = None,
        n_keys: int | None = None,
        inplace_safe: bool = False,
        chunk_size: int | None = None,
        enable_efficient_fusion: bool = False,
    ) -> torch.Tensor:
        # inplace_safe only lets the host reuse buffers; chunk_size bounds the host's local
        # attention memory (ours holds only the 32 x 128 tiles); the local path ignores
        # enable_efficient_fusion, as the host's does
        local = bool(n_queries and n_keys)
        return self._finish(
            self.flash_bias(
                a,
                s,
                z,
                n_queries=n_queries if local else None,
                n_keys=n_keys if local else None,
                efficient_fusion=enable_efficient_fusion and not local,
            )
        )


def _diffusion(
    site: Site, mode: str, factor_config: FactorConfig | None, backend: str, svd_config: SVDConfig | None
) -> PatchedModule:
    host, where = site.module, site.path
    att = host.attention
    if not host.has_s:
        raise UnsupportedModuleError(f"{where}: a diffusion-module AttentionPairBias without has_s is not supported")
    if att.linear_g is None:
        raise UnsupportedModuleError(f"{where}: attention without gating is not supported")
    if site.kind == "atom":
        mode, factor_config = "exact", None  # local tiles: a dense bias read once, nothing to factor
    names = [
        "linear_nobias_z",
        "linear_a_last",
        "attention.linear_q",
        "attention.linear_k",
        "attention.linear_v",
        "attention.linear_g",
        "attention.linear_o",
        "layernorm_a.linear_s",
        "layernorm_a.linear_nobias_s",
    ]
    if host.cross_attention_mode:
        names += ["layernorm_kv.linear_s", "layernorm_kv.linear_nobias_s"]
    for name in names:
        check_linear(host.get_submodule(name), f"{where}.{name}")
    c_a, c_z = att.c_q, host.linear_nobias_z.in_features
    c_s = host.linear_a_last.in_features
    ours = build_on_meta(
        FlashBiasDiffusionAttention,
        c_a=c_a,
        c_s=c_s,
        c_z=c_z,
        n_heads=att.num_heads,
        head_dim=att.c_hidden,
        cross_attention=bool(host.cross_attention_mode),
        **projection_biases(host, "attention.linear_{}"),
        svd_config=svd_config if mode == "lowrank" and factor_config is None else None,
        backend=backend,
    )
    adalns = [("adaln_a", "layernorm_a")] + ([("adaln_kv", "layernorm_kv")] if host.cross_attention_mode else [])
    for ours_name, host_name in adalns:
        dst, src = getattr(ours, ours_name), getattr(host, host_name)
        for norm in ("layernorm_a", "layernorm_s"):
            share_layer_norm(
                getattr(dst, norm.replace("layernorm", "layer_norm")), getattr(src, norm), f"{where}.{host_name}.{norm}"
            )
        share_linear(dst.linear_s, src.linear_s, f"{where}.{host_name}.linear_s")
        share_linear(dst.linear_nobias_s, src.linear_nobias_s, f"{where}.{host_name}.linear_nobias_s")
    assert ours.layer_norm_z is not None  # built with pair_layer_norm (default True)
    share_layer_norm(ours.layer_norm_z, host.layernorm_z, f"{where}.layernorm_z")
    share_linear(ours.linear_z, host.linear_nobias_z, f"{where}.linear_nobias_z")
    share_linear(ours.linear_a_last, host.linear_a_last, f"{where}.linear_a_last")
    _share_attention(ours, host, att, where, factor_config, c_z, mode)
    return ProtenixDiffusionAttentionPairBias(host, ours, site)


def make_replacement(
    site: Site,
    *,
    mode: str,
    factor_config: FactorConfig | None,
    backend: str = "auto",
    svd_config: SVDConfig | None = None,
) -> PatchedModule:
    """The wrapper that replaces ``site.module``, sharing its parameters. ``svd_config``: the
    SVD factors of the lowrank "diffusion" sites given no ``factor_config``."""
    if site.kind in DIFFUSION_KINDS:
        return _diffusion(site, mode, factor_config, backend, svd_config)
    build = _triangle if site.kind == "triangle" else _single
    return build(site, mode, factor_config, backend)


def graph_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose one call is one diffusion step (``patching.cuda_graphs.graph_diffusion``):
    every ``DiffusionModule`` (``Protenix.diffusion_module``; the sampler calls it with new
    ``x_noisy`` / ``t_hat_noise_level`` and the same other arguments at every step). The
    outermost ones only (none of Protenix's nests another)."""
    from protenix.model.modules.diffusion import DiffusionModule

    return outermost(model, lambda m: isinstance(m, DiffusionModule))


def run_trunk_stack(
    stack: nn.Module, s: torch.Tensor, z: torch.Tensor, mask: torch.Tensor, pair_mask: torch.Tensor
) -> None:
    """One call of a trunk stack (``TRUNK_STACK_CLASS``) on batch-of-one inputs: s [1, n, c_s],
    z [1, n, n, c_z], mask [1, n], pair_mask [1, n, n]. Protenix's stacks take unbatched (s, z, pair_mask)."""
    stack(s[0], z[0], pair_mask[0])


def sample_runner(model: nn.Module) -> tuple[Callable[[str, int], object], str] | None:
    """``(run(sequence, seed), what it runs)`` when ``model`` is a full ``Protenix`` model: its
    inference on the sequence's real features (``featurize.sequence_features``); else None."""
    if type(model).__name__ != "Protenix":
        return None
    from .featurize import sequence_features

    device = next(model.parameters()).device

    def run(sequence: str, seed: int) -> object:
        features = {k: v.to(device) for k, v in sequence_features(sequence, seed=seed).items()}
        return model(features, None, None, mode="inference")

    return run, "full Protenix model, inference on the sample sequences' features (hosts/protenix/featurize.py)"


def lean_methods(module: nn.Module) -> dict[str, Callable[..., object]]:
    """hosts/protenix/lean.py: the ``ConfidenceHead``'s forward one diffusion sample per call (its
    pae / pde logits never held twice), the ``DiffusionConditioning``'s ``prepare_cache`` in
    rows of the pair representation and the ``RelativePositionEncoding``'s ``generate_relp``
    with uint8 instead of int64 one-hots; the same outputs."""
    return lean.lean_methods(module)
