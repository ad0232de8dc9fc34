"""Entropic optimal transport between two mini-batches: Sinkhorn in the log domain, costs, the
Sinkhorn divergence (EncapNet's feedback-agreement loss, seed 004 section 3.2, eqs. 8-11).

`sinkhorn` runs the authors' iterations (PAPERS.md section 5 "OT unit": b = 1/B; L times
{a = (1/B) / (K b); b = (1/B) / (K^T a)}; P = diag(a) K diag(b); W = <P, C>) with K = exp(-C/eps),
but on log-scalings with logsumexp, so that no kernel entry is ever formed: for any eps > 0 the
iterates stay finite where exp(-C/eps) would underflow to 0 and the scaling form would divide
0 by 0 (the authors add 1e-20 to the denominators instead). The result is the same P as the
scaling form wherever that one is finite. The iterations run in float64 (a B x B problem: cheap),
since the potentials grow like |C| / eps. ``grad_through_iterations=False`` detaches the plan
(the gradient w.r.t. C is then P itself, the envelope theorem's: Table 3 right, d2, is the
opposite, back-propagating through the iterates).

Checked against POT (``ot.sinkhorn2``) in tests/trainables/test_encapnet.py: the authors update
a before b, POT updates b (its v) before a (its u), so our L iterations on C are POT's L
iterations on C^T.
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
    """Entropic OT between two discrete measures, cost (N, M), weights uniform unless log_a (N,)
    and log_b (M,) give their logarithms. Returns (W, P): W = <P, C> after `iterations` Sinkhorn
    iterations at regularisation `eps` (> 0), P the transport plan (N, M)."""
    if not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"sinkhorn: eps must be a finite number > 0, got {eps}")
    if iterations < 1:
        raise ValueError(f"sinkhorn: iterations must be >= 1, got {iterations}")
    n, m = cost.shape
    dtype = cost.dtype
    c64 = cost.double()  # in float64: the potentials reach |C| / eps (5e7 at eps 1e-6), beyond float32's digits
    log_a = torch.full((n,), -math.log(n), dtype=c64.dtype, device=cost.device) if log_a is None else log_a.double()
    log_b = torch.full((m,), -math.log(m), dtype=c64.dtype, device=cost.device) if log_b is None else log_b.double()
    log_k = -c64 / eps  # log of the Gibbs kernel, never exponentiated on its own
    g = log_b.clone()  # log b, the authors' start b = 1/B
    for _ in range(int(iterations)):
        f = log_a - torch.logsumexp(log_k + g[None, :], dim=1)  # log a = log(1/B) - log(K b)
        g = log_b - torch.logsumexp(log_k + f[:, None], dim=0)  # log b = log(1/B) - log(K^T a)
    plan = torch.exp(f[:, None] + log_k + g[None, :])
    if not grad_through_iterations:
        plan = plan.detach()
    return (plan * c64).sum().to(dtype), plan.to(dtype)


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
