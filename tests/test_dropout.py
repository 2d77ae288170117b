"""``commonspace.nn.dropout``: nn.Dropout's contract (inverted scaling, eval identity, gradient through the mask)
with the cheaper CPU mask, and a keep rate within sampling error of 1 - p."""

from __future__ import annotations

import math

import pytest
import torch

from commonspace.models.bidnn import BiDNN
from commonspace.nn.dropout import Dropout, dropout_mask
from commonspace.nn.mlp import MLP


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_keep_rate_is_one_minus_p(p):
    g = torch.Generator().manual_seed(0)
    n = 400_000
    keep = dropout_mask((n,), p, generator=g).double().mean().item()
    # 6 standard deviations of a binomial proportion
    assert abs(keep - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n)


def test_both_halves_of_each_draw_are_used_and_independent():
    g = torch.Generator().manual_seed(1)
    m = dropout_mask((200_000,), 0.5, generator=g).reshape(-1, 2).double()
    even, odd = m[:, 0], m[:, 1]
    assert abs(even.mean().item() - 0.5) < 0.01 and abs(odd.mean().item() - 0.5) < 0.01
    assert abs(torch.corrcoef(torch.stack([even, odd]))[0, 1].item()) < 0.01


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 5), (1, 1)])
def test_mask_shape_and_odd_sizes(shape):
    assert dropout_mask(shape, 0.3).shape == torch.Size(shape)


def test_seeded_masks_repeat_and_differ_across_seeds():
    def draw(seed):
        torch.manual_seed(seed)
        return Dropout(0.3).train()(torch.ones(64, 33))
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_forward_scales_kept_units_and_gradient_follows_the_mask():
    torch.manual_seed(0)
    x = torch.randn(50, 40, requires_grad=True)
    d = Dropout(0.25).train()
    y = d(x)
    kept = y != 0
    assert 0.6 < kept.float().mean().item() < 0.9
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.75, rtol=0, atol=1e-6)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75, rtol=0, atol=1e-6)


def test_eval_mode_and_edge_rates():
    x = torch.randn(10, 6)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Dropout(1.5)


def test_models_use_it():
    assert isinstance(BiDNN({"a": 4, "b": 3}).drop, Dropout)
    assert any(isinstance(m, Dropout) for m in MLP([4, 8, 2], dropout=0.1))
