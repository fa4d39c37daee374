"""Shared by the host-model tests: random, non-zero host weights (the hosts zero-initialise
their output projections and gates, which would hide every error; the function lives in
pairformer_fb.hosts.presets, the structure benchmark uses it too), and an exactly low-rank
pair bias with factor networks set to reproduce it (the lowrank-equals-exact tests)."""

import torch

from pairformer_fb.hosts.presets import randomise_

__all__ = ["additive_pair", "randomise_", "set_exact_factors"]


def additive_pair(n, c, g):
    """z[j, k] = x_j + y_k, x and y in orthogonal zero-mean subspaces with ||x_j|| and ||y_k||
    constant: every z[j, k] has the same mean (0) and variance, so a layer norm maps z to an
    affine function of it, and any linear bias of LN(z) is u_j + v_k: rank 2 exactly (also
    in the transposed orientation, u_k + v_j)."""
    basis, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))
    basis = basis[:, 1:] - basis[:, 1:].mean(0)  # columns orthogonal to ones -> zero mean
    basis, _ = torch.linalg.qr(basis)
    half = (c - 1) // 2
    x = torch.randn(n, half, generator=g, dtype=torch.float64)
    y = torch.randn(n, half, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True) * 3.0
    y = y / y.norm(dim=-1, keepdim=True) * 4.0
    xs, ys = x @ basis[:, :half].T, y @ basis[:, half : 2 * half].T
    return (xs[:, None, :] + ys[None, :, :]).float()


def set_exact_factors(factor_network, weight, pair):
    """A depth-0 factor network whose phi_q phi_k^T equals W p[j, k] exactly for the additive
    pair rep p in the bias' orientation (no mask): phi_q[h, j] = (W_h f_q[j] - W_h mean(p), 1),
    phi_k[h, k] = (1, W_h f_k[k])."""
    (lin_q,), (lin_k,) = factor_network.query_mlp, factor_network.key_mlp
    mean = pair.mean((0, 1))
    with torch.no_grad():
        for m in (lin_q, lin_k):
            m.weight.zero_()
            m.bias.zero_()
        for h in range(weight.shape[0]):
            lin_q.weight[2 * h] = weight[h]
            lin_q.bias[2 * h] = -(weight[h] @ mean)
            lin_q.bias[2 * h + 1] = 1.0
            lin_k.bias[2 * h] = 1.0
            lin_k.weight[2 * h + 1] = weight[h]
