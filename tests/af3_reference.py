"""Independent plain-torch float64 implementations of the attention modules, written from the
AF2/AF3 supplement formulas with explicit indices and everything materialised (per-row logits
[*, H, N, N, N] included). The oracle of tests/test_modules.py.

Parameters come as a dict {name: tensor} (a module's state_dict; see ``params64``), so the same
weights drive the module under test and the formula.

Masking: the hosts add 1e9 * (mask - 1) to fp32 logits, where -1e9 absorbs any logit of
moderate size (fp32 spacing at 1e9 is 64): a masked logit's value *is* -1e9, while autograd
still passes the logit's gradient through the addition. In float64 the sum would keep the
logit, so ``mask_logits`` reproduces the fp32 arithmetic: value -1e9, derivative 1. A fully
masked row thus averages v uniformly, and its gradients are the hosts'.
"""

import math

import torch

MASKED_LOGIT = -1e9


def mask_logits(logits, key_valid):
    """The hosts' fp32 ``logits + 1e9 * (mask - 1)`` in float64 (see the module docstring)."""
    absorbed = MASKED_LOGIT + (logits - logits.detach())
    return torch.where(key_valid, logits, absorbed)


def params64(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().double() for name, t in module.state_dict().items()}


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def linear(x, p, name):
    out = x @ p[f"{name}.weight"].T
    bias = p.get(f"{name}.bias")
    return out + bias if bias is not None else out


def mlp_tanh(x, p, prefix):
    """The Sequential of Linear / Tanh layers stored under ``prefix`` (e.g. factor_network.query_mlp)."""
    indices = sorted(
        int(name[len(prefix) + 1 :].split(".")[0])
        for name in p
        if name.startswith(prefix + ".") and name.endswith(".weight")
    )
    for n, i in enumerate(indices):
        x = linear(x, p, f"{prefix}.{i}")
        if n < len(indices) - 1:
            x = torch.tanh(x)
    return x


def factors(source, source_mask, p, n_heads, s_inputs=None):
    """phi_q, phi_k [*, H, N, R] of a bias whose (query x, key y) entry comes from source[x, y]:
    query features = masked mean over y of source[x, y], key features = masked mean over x."""
    w = torch.ones(source.shape[:-1], dtype=source.dtype) if source_mask is None else source_mask.double()
    f_q = (w[..., None] * source).sum(-2) / w.sum(-1).clamp_min(1)[..., None]
    f_k = (w[..., None] * source).sum(-3) / w.sum(-2).clamp_min(1)[..., None]
    if s_inputs is not None:
        f_q, f_k = torch.cat([f_q, s_inputs.double()], -1), torch.cat([f_k, s_inputs.double()], -1)
    phi_q = mlp_tanh(f_q, p, "factor_network.query_mlp")
    phi_k = mlp_tanh(f_k, p, "factor_network.key_mlp")
    split = lambda t: t.unflatten(-1, (n_heads, -1)).movedim(-2, -3)  # noqa: E731  [*, H, N, R]
    return split(phi_q), split(phi_k)


def triangle_bias_term(b, node, ending_bias):
    """T[*, h, x, y]: the bias added to the logit of query pair / key pair, from b[*, a, c, h]:
    starting node T[h, j, k] = b[j, k, h]; ending node T[h, i, k] = b[k, i, h] ("transposed")
    or b[i, k, h] ("untransposed")."""
    t = b.movedim(-1, -3)  # [*, h, a, c] = b[a, c, h]
    if node == "ending" and ending_bias == "transposed":
        t = t.transpose(-1, -2)
    return t


def triangle_lowrank_bias_term(z, mask, p, *, n_heads, node, ending_bias, s_inputs=None, eps=1e-5):
    """T = phi_q phi_k^T with the factors computed from the pair rep the exact T comes from:
    T[h, x, y] is projected from LN(z)[x, y], or from LN(z)[y, x] for the transposed ending node
    (masks alike)."""
    x = layer_norm(z.double(), p["layer_norm.weight"], p["layer_norm.bias"], eps)
    if node == "ending" and ending_bias == "transposed":
        x, mask = x.transpose(-2, -3), (mask.transpose(-1, -2) if mask is not None else None)
    phi_q, phi_k = factors(x, mask, p, n_heads, s_inputs)
    return phi_q @ phi_k.transpose(-1, -2)


def pair_bias_lowrank_bias_term(z, mask, p, *, n_heads, s_inputs=None, eps=1e-5):
    """T = phi_q phi_k^T for attention with pair bias: factors from LN(z) with the pair mask
    mask[i] & mask[j]."""
    x = layer_norm(z.double(), p["layer_norm_z.weight"], p["layer_norm_z.bias"], eps)
    pair_mask = mask[..., :, None] & mask[..., None, :] if mask is not None else None
    phi_q, phi_k = factors(x, pair_mask, p, n_heads, s_inputs)
    return phi_q @ phi_k.transpose(-1, -2)


def triangle_attention(z, mask, p, *, n_heads, node, ending_bias, eps=1e-5, bias_term=None):
    """AF2 Algorithms 13/14 (AF3 14/15). z [*, N, N, c], mask [*, N, N] bool or None.

    starting: a[h,i,j,k] = softmax_k(q_ij . k_ik / sqrt(D) + b_jk),  o_ij = sum_k a v_ik
    ending:   a[h,i,j,k] = softmax_k(q_ij . k_kj / sqrt(D) + b_ki or b_ik),  o_ij = sum_k a v_kj
    ``bias_term`` [*, H, N, N] replaces T (see triangle_bias_term), e.g. a low-rank bias.
    """
    z = z.double()
    x = layer_norm(z, p["layer_norm.weight"], p["layer_norm.bias"], eps)
    heads = lambda t: t.unflatten(-1, (n_heads, -1))  # noqa: E731
    q, k, v = (heads(linear(x, p, f"linear_{n}")) for n in "qkv")  # [*, a, c, h, d]
    g = torch.sigmoid(heads(linear(x, p, "linear_g")))
    d = q.shape[-1]
    if bias_term is None:
        bias_term = triangle_bias_term(linear(x, p, "linear_b"), node, ending_bias)
    bias_term = bias_term.double()
    if node == "starting":
        logits = torch.einsum("...ijhd,...ikhd->...hijk", q, k) / math.sqrt(d)
        logits = logits + bias_term[..., :, None, :, :]  # T[h, j, k]
        key_valid = mask[..., None, :, None, :] if mask is not None else None  # mask[i, k]
    else:
        logits = torch.einsum("...ijhd,...kjhd->...hijk", q, k) / math.sqrt(d)
        logits = logits + bias_term[..., :, :, None, :]  # T[h, i, k]
        key_valid = mask.transpose(-1, -2)[..., None, None, :, :] if mask is not None else None  # mask[k, j]
    if key_valid is not None:
        logits = mask_logits(logits, key_valid)
    attn = torch.softmax(logits, dim=-1)
    if node == "starting":
        o = torch.einsum("...hijk,...ikhd->...ijhd", attn, v)
    else:
        o = torch.einsum("...hijk,...kjhd->...ijhd", attn, v)
    return linear((g * o).flatten(-2), p, "linear_o")


def attention_pair_bias(s, z, mask, p, *, n_heads, eps=1e-5, bias_term=None):
    """AF3 Algorithm 24 without conditioning. s [*, N, c_s], z [*, N, N, c_z], mask [*, N].

    a[h,i,j] = softmax_j(q_i . k_j / sqrt(D) + b_ij),  out_i = linear_o(g_i * sum_j a v_j)
    ``bias_term`` [*, H, N, N] replaces b[h, i, j].
    """
    s, z = s.double(), z.double()
    a = layer_norm(s, p["layer_norm_s.weight"], p["layer_norm_s.bias"], eps) if "layer_norm_s.weight" in p else s
    x = layer_norm(z, p["layer_norm_z.weight"], p["layer_norm_z.bias"], eps)
    heads = lambda t: t.unflatten(-1, (n_heads, -1))  # noqa: E731
    q, k, v = (heads(linear(a, p, f"linear_{n}")) for n in "qkv")  # [*, i, h, d]
    g = torch.sigmoid(heads(linear(a, p, "linear_g")))
    if bias_term is None:
        bias_term = linear(x, p, "linear_z").movedim(-1, -3)  # [*, h, i, j]
    logits = torch.einsum("...ihd,...jhd->...hij", q, k) / math.sqrt(q.shape[-1]) + bias_term.double()
    if mask is not None:
        logits = mask_logits(logits, mask[..., None, None, :])
    o = torch.einsum("...hij,...jhd->...ihd", torch.softmax(logits, dim=-1), v)
    return linear((g * o).flatten(-2), p, "linear_o")
