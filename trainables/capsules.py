"""Capsule building blocks shared by the capsule families (Share/Split, seed 000; EncapNet, seed 004).

- `squash` (Sabour et al. 2017, eq. 1), `capsule_length`, `margin_loss` (eq. 4): the ops both
  families use; `trainables/share_split.py` and `trainables/encapnet.py` import them from here and
  from nowhere else (no family imports another family).
- `squash_channels`: squash on conv feature maps whose channels hold capsules, channel index
  ``g * D + d`` for capsule type ``g`` and capsule dimension ``d`` (EncapNet's layout, PAPERS.md
  section 5 "Capsules").
- `capsules_of` / `channels_of`: that layout as (B, N, D) capsule vectors and back.
- `dynamic_routing` (Sabour et al. 2017, Procedure 1) and `em_routing` (Hinton et al. 2018,
  Procedure 1, on pose vectors): the CapNet baselines of EncapNet's Table 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-9) -> torch.Tensor:
    """Sabour et al. (2017) eq. 1: v = s |s|^2 / (1 + |s|^2) / |s| along `dim` (eps keeps the
    gradient finite at s = 0, where v = 0)."""
    sq = (s**2).sum(dim, keepdim=True)
    return s * (sq / (1 + sq) / torch.sqrt(sq + eps))


def capsule_length(v: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """|v| along the last dim, with a finite gradient at 0."""
    return torch.sqrt((v**2).sum(-1) + eps)


def margin_loss(
    lengths: torch.Tensor, y: torch.Tensor, m_plus: float = 0.9, m_minus: float = 0.1, lam: float = 0.5
) -> torch.Tensor:
    """Sabour et al. (2017) eq. 4 over capsule lengths (B, K): sum over classes of
    T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2, mean over the batch."""
    t = F.one_hot(y, lengths.shape[-1]).to(lengths.dtype)  # (B, K)
    per_class = t * F.relu(m_plus - lengths) ** 2 + lam * (1 - t) * F.relu(lengths - m_minus) ** 2
    return per_class.sum(-1).mean()


def squash_channels(x: torch.Tensor, types: int) -> torch.Tensor:
    """Squash every capsule of a (B, types * D, H, W) map (channel g * D + d) at every position."""
    b, c, h, w = x.shape
    return squash(x.reshape(b, types, c // types, h, w), dim=2).reshape(b, c, h, w)


def capsules_of(x: torch.Tensor, types: int) -> torch.Tensor:
    """(B, types * D, H, W) -> (B, types * H * W, D): capsule n = (g * H + i) * W + j."""
    b, c, h, w = x.shape
    return x.reshape(b, types, c // types, h, w).permute(0, 1, 3, 4, 2).reshape(b, types * h * w, c // types)


def channels_of(v: torch.Tensor, types: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `capsules_of`: (B, types * H * W, D) -> (B, types * D, H, W)."""
    b, _, d = v.shape
    return v.reshape(b, types, h, w, d).permute(0, 1, 4, 2, 3).reshape(b, types * d, h, w)


def dynamic_routing(u_hat: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Routing by agreement (Sabour et al. 2017, Procedure 1) on predictions u_hat (B, J, I, D)
    of I input capsules for J output capsules: logits b = 0; r times {c = softmax(b); s_j =
    sum_i c_ij u_hat_j|i; v = squash(s); b += u_hat . v}. Returns v (B, J, D).

    The softmax runs over the input capsules i, as the EncapNet authors' CapNet code does
    ("dim=1 won't converge" there); Sabour et al. normalise over the outputs j."""
    logits = torch.zeros(u_hat.shape[:3], device=u_hat.device, dtype=u_hat.dtype)
    for r in range(iterations):
        c = torch.softmax(logits, dim=2)
        v = squash(torch.einsum("bji,bjid->bjd", c, u_hat))
        if r < iterations - 1:
            logits = logits + torch.einsum("bjid,bjd->bji", u_hat, v)
    return v


def em_routing(
    votes: torch.Tensor,
    a_in: torch.Tensor,
    beta_v: torch.Tensor,
    beta_a: torch.Tensor,
    iterations: int = 3,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM routing (Hinton et al. 2018, Procedure 1) on pose vectors: votes (B, J, I, D), input
    activations a_in (B, I) in [0, 1], learned beta_v, beta_a (J,). Returns the output poses
    mu (B, J, D) and activations a (B, J) in (0, 1).

    M-step: R' = R a_i; mu, sigma^2 = weighted mean and variance of the votes; cost_j =
    sum_d (beta_v + log sigma_jd) sum_i R'_ij, scaled to zero mean and unit spread over j (the
    authors' CapNet code min-max scales it; both keep the sigmoid out of saturation); a_j =
    sigmoid(lambda (beta_a - cost_j)) with the inverse temperature lambda = 1, 2, 3, ... over the
    iterations. E-step in the log domain: R_ij = softmax_j(log a_j + log N(V_ij; mu_j, sigma_j))."""
    b, j, i, d = votes.shape
    r = torch.full((b, j, i), 1.0 / j, device=votes.device, dtype=votes.dtype)
    for it in range(iterations):
        rw = r * a_in[:, None, :]  # (B, J, I)
        mass = rw.sum(2, keepdim=True) + eps  # (B, J, 1)
        mu = torch.einsum("bji,bjid->bjd", rw, votes) / mass
        var = torch.einsum("bji,bjid->bjd", rw, (votes - mu[:, :, None]) ** 2) / mass + eps
        log_sigma = 0.5 * torch.log(var)
        cost = ((beta_v[None, :, None] + log_sigma) * mass).sum(2)  # (B, J)
        cost = (cost - cost.mean(1, keepdim=True)) / (cost.std(1, keepdim=True, unbiased=False) + eps)
        a = torch.sigmoid((it + 1.0) * (beta_a[None, :] - cost))
        if it < iterations - 1:
            log_p = -(((votes - mu[:, :, None]) ** 2) / (2 * var[:, :, None])).sum(3) - log_sigma.sum(2)[:, :, None]
            r = torch.softmax(torch.log(a + eps)[:, :, None] + log_p, dim=1)
    return mu, a
