"""Inner products of per-example weight gradients kept in factored form.

For a Linear or Conv2d layer the gradient of example ``i``'s loss with respect to the weight is a
sum of outer products, one per position ``t`` at which the weight was applied::

    g_i = sum_t  G[i, t] (outer) A[i, t]          (dout x din)

``A[i, t]`` is the layer input at position ``t`` (for Conv2d an unfolded patch of
``cin * kh * kw`` values, for Linear with extra leading dims one row) and ``G[i, t]`` the gradient
of the loss with respect to the layer output there. A Linear layer on flat inputs is the case
``T = 1``: a rank-1 gradient.

Cluster centres are kept as rank-``r`` factors ``C_k = sum_r U[k, r] (outer) V[k, r]``. Every
quantity the clustering needs is an inner product between these two factored forms, so it is
computed here from the factors and never from a materialized ``(B, dout, din)`` tensor, unless
that is the cheaper contraction (large ``T``; see ``method``):

* ``<g_i, g_i>  = sum_{s,t} (A_is . A_it)(G_is . G_it)``
* ``<g_i, C_k>  = sum_{t,r} (A_it . V_kr)(G_it . U_kr)``
* ``<C_k, C_k>  = sum_{r,q} (U_kr . U_kq)(V_kr . V_kq)``

Shapes: ``A`` is ``(B, T, din)``, ``G`` is ``(B, T, dout)``, ``U`` is ``(K, r, dout)``, ``V`` is
``(K, r, din)``.
"""
from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "Method",
    "example_sq_norms",
    "example_center_dots",
    "center_sq_norms",
    "cluster_sums",
    "truncate_rank",
]

Method = Literal["auto", "factored", "dense"]


def _check_factors(A: torch.Tensor, G: torch.Tensor) -> None:
    if A.dim() != 3 or G.dim() != 3 or A.shape[:2] != G.shape[:2]:
        raise ValueError(f"A and G must be (B, T, din) and (B, T, dout), got {tuple(A.shape)} and {tuple(G.shape)}")


def _check_method(method: str) -> None:
    if method not in ("auto", "factored", "dense"):
        raise ValueError(f"method must be 'auto', 'factored' or 'dense', got {method!r}")


def example_sq_norms(A: torch.Tensor, G: torch.Tensor, method: Method = "auto") -> torch.Tensor:
    """``||g_i||^2`` for every example: shape ``(B,)``.

    ``factored`` costs ``B T^2 (din + dout)`` through the two Gram matrices over positions;
    ``dense`` costs ``B T din dout`` and forms each example's gradient. ``auto`` picks the cheaper.
    """
    _check_factors(A, G)
    _check_method(method)
    B, T, din = A.shape
    dout = G.shape[2]
    if method == "auto":
        method = "factored" if T * (din + dout) <= din * dout else "dense"
    if method == "factored":
        if T == 1:  # a rank-1 gradient: ||o a^T||^2 = ||a||^2 ||o||^2
            return A.square().sum((1, 2)) * G.square().sum((1, 2))
        return (torch.bmm(A, A.transpose(1, 2)) * torch.bmm(G, G.transpose(1, 2))).sum((1, 2))
    return torch.bmm(G.transpose(1, 2), A).square().sum((1, 2))


def example_center_dots(
    A: torch.Tensor, G: torch.Tensor, U: torch.Tensor, V: torch.Tensor, method: Method = "auto"
) -> torch.Tensor:
    """``<g_i, C_k>`` for every example and centre: shape ``(B, K)``.

    ``factored`` projects inputs and output gradients on the centre factors (``B T K r (din +
    dout)``); ``dense`` forms each example's gradient once (``B T din dout + B K r din dout``).
    """
    _check_factors(A, G)
    _check_method(method)
    if U.dim() != 3 or V.dim() != 3 or U.shape[:2] != V.shape[:2]:
        raise ValueError(f"U and V must be (K, r, dout) and (K, r, din), got {tuple(U.shape)} and {tuple(V.shape)}")
    B, T, din = A.shape
    dout = G.shape[2]
    K, r = U.shape[:2]
    if method == "auto":
        factored = B * T * K * r * (din + dout)
        dense = B * T * din * dout + B * K * r * din * dout
        method = "factored" if factored <= dense else "dense"
    if method == "factored":
        av = torch.einsum("bti,kri->btkr", A, V)
        gu = torch.einsum("bto,kro->btkr", G, U)
        return (av * gu).sum((1, 3))
    g = torch.bmm(G.transpose(1, 2), A)  # (B, dout, din): one layer's per-example gradients
    return torch.einsum("boi,kro,kri->bk", g, U, V)


def center_sq_norms(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``||C_k||^2`` of rank-``r`` centres: shape ``(K,)``."""
    return (torch.bmm(U, U.transpose(1, 2)) * torch.bmm(V, V.transpose(1, 2))).sum((1, 2))


def cluster_sums(A: torch.Tensor, G: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``sum_{i in k} g_i`` for every cluster: shape ``(K, dout, din)``.

    ``onehot`` is ``(B, K)`` (any weights work: the result is ``sum_i onehot[i, k] g_i``). This is
    one weighted weight-gradient per cluster, the dense quantity the Lloyd update needs; it costs
    ``K`` times one layer's weight memory, never ``B`` times.
    """
    _check_factors(A, G)
    if onehot.dim() != 2 or onehot.shape[0] != A.shape[0]:
        raise ValueError(f"onehot must be (B, K) with B={A.shape[0]}, got {tuple(onehot.shape)}")
    return torch.einsum("bk,bto,bti->koi", onehot.to(A.dtype), G, A)


def truncate_rank(M: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors (Eckart-Young) of each ``M[k]``: ``U (K, r, dout)``, ``V (K, r, din)``
    with ``M[k] ~= sum_r U[k, r] (outer) V[k, r]`` (singular values folded into ``U``)."""
    if M.dim() != 3:
        raise ValueError(f"M must be (K, dout, din), got {tuple(M.shape)}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    r = min(rank, M.shape[1], M.shape[2])
    u, s, vh = torch.linalg.svd(M, full_matrices=False)
    U = (u[:, :, :r] * s[:, None, :r]).transpose(1, 2)
    V = vh[:, :r, :]
    if r < rank:  # keep the requested shape; extra factors are zero
        pad = rank - r
        U = torch.cat([U, U.new_zeros(U.shape[0], pad, U.shape[2])], 1)
        V = torch.cat([V, V.new_zeros(V.shape[0], pad, V.shape[2])], 1)
    return U.contiguous(), V.contiguous()
