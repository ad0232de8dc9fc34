"""Capsule building blocks (trainables/capsules.py), shared by Share/Split and EncapNet: squash and
margin loss values, the channel layout, routing shapes."""

from __future__ import annotations

import pytest
import torch

from trainables import capsules, encapnet, share_split
from trainables.capsules import (
    capsule_length,
    capsules_of,
    channels_of,
    dynamic_routing,
    em_routing,
    margin_loss,
    squash,
    squash_channels,
)


def test_both_families_use_the_shared_blocks():
    for name in ("squash", "margin_loss", "capsule_length"):
        assert getattr(share_split, name) is getattr(capsules, name)
    assert encapnet.squash is capsules.squash and encapnet.margin_loss is capsules.margin_loss


def test_squash_values():
    v = squash(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 1.0]]))
    assert v[0].tolist() == pytest.approx([15 / 26, 20 / 26])  # |s| = 5 -> |v| = 25/26 along s
    assert v[1].tolist() == [0.0, 0.0]
    assert v[2].tolist() == pytest.approx([0.0, 0.5])  # |s| = 1 -> 1/2
    big = squash(torch.randn(100, 10, 8) * 10)
    assert (big.norm(dim=-1) < 1).all()
    s = torch.zeros(3, requires_grad=True)
    squash(s).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_squash_along_another_dim():
    s = torch.tensor([[3.0, 0.0], [4.0, 1.0]])  # capsules are the columns
    v = squash(s, dim=0)
    assert v[:, 0].tolist() == pytest.approx([15 / 26, 20 / 26])
    assert v[:, 1].tolist() == pytest.approx([0.0, 0.5])


def test_capsule_length():
    assert capsule_length(torch.tensor([[3.0, 4.0]])).item() == pytest.approx(5.0)


def test_margin_loss_values():
    lengths = torch.tensor([[0.95, 0.2, 0.05], [0.5, 0.3, 0.0]])
    y = torch.tensor([0, 0])
    # sample 1: 0 + 0.5 * 0.1^2 + 0 = 0.005; sample 2: 0.4^2 + 0.5 * 0.2^2 = 0.18; mean 0.0925
    assert margin_loss(lengths, y).item() == pytest.approx(0.0925)
    assert margin_loss(torch.tensor([[0.1, 0.95]]), torch.tensor([1])).item() == pytest.approx(0.0)
    assert margin_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([1])).item() == pytest.approx(0.5 * 0.81)
    # the other margins and weight
    assert margin_loss(torch.tensor([[0.5, 0.5]]), torch.tensor([0]), m_plus=0.8, m_minus=0.2, lam=1.0).item() == (
        pytest.approx(0.3**2 + 0.3**2)
    )


def test_channel_layout_is_type_major():
    """Channel g * D + d is dimension d of capsule type g: squash_channels squashes exactly those."""
    types, dim = 3, 4
    x = torch.randn(2, types * dim, 5, 5)
    out = squash_channels(x, types)
    for g in range(types):
        block = x[:, g * dim : (g + 1) * dim]  # (B, D, H, W)
        assert torch.allclose(out[:, g * dim : (g + 1) * dim], squash(block, dim=1), atol=1e-6)
    caps = capsules_of(x, types)
    assert caps.shape == (2, types * 25, dim)
    assert torch.equal(caps[:, 25 * 1 + 5 * 2 + 3], x[:, dim : 2 * dim, 2, 3])  # type 1 at (2, 3)
    assert torch.equal(channels_of(caps, types, 5, 5), x)


def test_dynamic_routing_shapes_and_agreement():
    u_hat = torch.randn(2, 5, 7, 4)
    v = dynamic_routing(u_hat, 3)
    assert v.shape == (2, 5, 4) and (v.norm(dim=-1) < 1).all()
    one = dynamic_routing(u_hat, 1)  # one iteration: uniform coupling = squash of the mean prediction
    assert torch.allclose(one, squash(u_hat.mean(2)), atol=1e-6)


def test_em_routing_shapes_and_ranges():
    votes = torch.randn(2, 5, 7, 4)
    mu, a = em_routing(votes, torch.rand(2, 7), torch.zeros(5), torch.zeros(5), 3)
    assert mu.shape == (2, 5, 4) and a.shape == (2, 5)
    assert ((a > 0) & (a < 1)).all() and torch.isfinite(mu).all()
    # identical votes for output 0 from every input: its variance is ~0, its cost lowest, its activation highest
    votes[:, 0] = votes[:, 0, :1]
    _, a = em_routing(votes, torch.ones(2, 7), torch.zeros(5), torch.zeros(5), 3)
    assert (a.argmax(1) == 0).all()
