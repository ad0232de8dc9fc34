"""Entropic optimal transport between two mini-batches: Sinkhorn in the log domain, costs, the
Sinkhorn divergence (EncapNet's feedback-agreement loss, seed 004 section 3.2, eqs. 8-11).

`sinkhorn` runs POT's iterations (``ot.sinkhorn`` / ``method="sinkhorn_log"``: u = 1/N; L times
{v = b / (K^T u); u = a / (K v)}; P = diag(u) K diag(v); W = <P, C>) with K = exp(-C/eps), on
log-scalings with logsumexp, so that no kernel entry is ever formed: for any eps > 0 the
iterates stay finite where exp(-C/eps) would underflow to 0 and the scaling form would divide
0 by 0 (the authors add 1e-20 to the denominators instead). The result is the same P as the
scaling form wherever that one is finite. The iterations run in float64 (a B x B problem: cheap),
since the potentials grow like |C| / eps. ``grad_through_iterations=False`` runs them without
autograd and gives the gradient w.r.t. C of P itself, the envelope theorem's (Table 3 right, d2,
is the opposite, back-propagating through the iterates).

The authors' code (PAPERS.md section 5 "OT unit": b = 1/B; L times {a = (1/B) / (K b);
b = (1/B) / (K^T a)}) updates the other side first: their L iterations on C are these on C^T, the
same problem (W and P^T) once converged. The order is POT's, so that a check against ``ot.sinkhorn2``
on the same cost needs no transposition (tests/trainables/test_encapnet.py, values and gradients,
uniform and non-uniform weights, single and batched costs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

COSTS = ("l2", "cosine")


def sinkhorn(
    cost: torch.Tensor,
    eps: float,
    iterations: int,
    *,
    grad_through_iterations: bool = True,
    log_a: torch.Tensor | None = None,
    log_b: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropic OT between two discrete measures, cost (..., N, M) (leading dimensions: a batch of
    problems), weights uniform unless log_a (..., N) and log_b (..., M) give their logarithms (equal
    total mass). Returns (W, P): W = <P, C> (shape (...)) after `iterations` Sinkhorn iterations at
    regularisation `eps` (> 0), P the transport plan (..., N, M)."""
    if not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"sinkhorn: eps must be a finite number > 0, got {eps}")
    if iterations < 1:
        raise ValueError(f"sinkhorn: iterations must be >= 1, got {iterations}")
    if cost.dim() < 2:
        raise ValueError(f"sinkhorn: cost must be (..., N, M), got shape {tuple(cost.shape)}")
    n, m = cost.shape[-2:]
    dtype = cost.dtype
    c64 = cost.double()  # in float64: the potentials reach |C| / eps (5e7 at eps 1e-6), beyond float32's digits
    log_a = torch.full((n,), -math.log(n), dtype=c64.dtype, device=cost.device) if log_a is None else log_a.double()
    log_b = torch.full((m,), -math.log(m), dtype=c64.dtype, device=cost.device) if log_b is None else log_b.double()
    if log_a.shape[-1] != n or log_b.shape[-1] != m:
        raise ValueError(f"sinkhorn: weights of sizes {log_a.shape[-1]} and {log_b.shape[-1]} for a cost of {n} x {m}")
    mass_a, mass_b = torch.logsumexp(log_a, dim=-1), torch.logsumexp(log_b, dim=-1)
    if not torch.allclose(mass_a, mass_b, atol=1e-9, rtol=0):
        raise ValueError("sinkhorn: the two measures must have the same total mass (balanced OT)")
    with torch.set_grad_enabled(grad_through_iterations and torch.is_grad_enabled()):
        log_k = -c64 / eps  # log of the Gibbs kernel, never exponentiated on its own
        f = torch.full((*c64.shape[:-1],), -math.log(n), dtype=c64.dtype, device=cost.device)  # POT's start u = 1/N
        for _ in range(int(iterations)):
            g = log_b - torch.logsumexp(log_k + f[..., :, None], dim=-2)  # log v = log b - log(K^T u)
            f = log_a - torch.logsumexp(log_k + g[..., None, :], dim=-1)  # log u = log a - log(K v)
        plan = torch.exp(f[..., :, None] + log_k + g[..., None, :])
    # without the iterations in the graph, d<P, C>/dC = P (the envelope theorem's gradient)
    return (plan * c64).sum(dim=(-2, -1)).to(dtype), plan.to(dtype)


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Ground cost between the rows of x (N, F) and y (M, F): ``l2`` the unsquared Euclidean
    distance (the authors' choice), ``cosine`` 1 - cosine similarity."""
    if kind == "l2":
        sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
        # the sqrt's gradient is infinite at 0 (x compared with itself): a tiny floor keeps it finite
        return torch.sqrt(sq.clamp_min(0) + 1e-12)
    if kind == "cosine":
        return 1 - F.normalize(x, dim=1, eps=1e-12) @ F.normalize(y, dim=1, eps=1e-12).T
    raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {kind!r}")


def sinkhorn_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    iterations: int,
    cost: str = "l2",
    bias_fix: bool = True,
    grad_through_iterations: bool = True,
) -> torch.Tensor:
    """The feedback-agreement loss between two batches of features (N, F) and (M, F) (eq. 11):
    with the bias fix the Sinkhorn divergence 2 W(x, y) - W(x, x) - W(y, y) (Genevay et al. 2018;
    exactly 0 for x = y), without it W(x, y) alone (Table 3 right, d1)."""

    def w(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        c = pairwise_cost(p, q, cost)
        return sinkhorn(c, eps, iterations, grad_through_iterations=grad_through_iterations)[0]

    if not bias_fix:
        return w(x, y)
    return 2 * w(x, y) - w(x, x) - w(y, y)


def kl_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The KL alternative to OT (Table 3 right, b; the paper gives no formula, the code none):
    each example's features softmax-normalised into a distribution, KL(y_i || x_i) averaged over
    the batch, y the target (lower layer), x the generated one."""
    return F.kl_div(F.log_softmax(x, dim=1), F.log_softmax(y, dim=1), reduction="batchmean", log_target=True)
