"""Triplet loss and semi-hard negative mining (thesis Eq. 3.1.6, Sec. 2.5)."""

from __future__ import annotations

import pytest
import torch

from commonspace.losses.triplet import same_label, semihard_negatives, squared_distances, triplet_loss


def test_squared_distances() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g), torch.randn(6, 4, generator=g)
    torch.testing.assert_close(squared_distances(a, b), torch.cdist(a, b) ** 2, atol=1e-5, rtol=1e-5)


def test_same_label_single_and_multi() -> None:
    assert same_label(torch.tensor([0, 1, 0]), torch.tensor([0, 1])).tolist() == [[True, False], [False, True],
                                                                                 [True, False]]
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert same_label(y, y).tolist() == [[True, False, True], [False, True, False], [True, False, True]]


def test_semihard_negative_is_picked_over_hard_and_easy() -> None:
    d_ap = torch.tensor([[1.0]])
    negs = torch.ones(1, 3, dtype=torch.bool)
    for order in ([0.5, 1.3, 2.5], [2.5, 0.5, 1.3], [1.3, 2.5, 0.5]):  # hard, semi-hard, easy in any position
        d_an = torch.tensor([order])
        idx, semi = semihard_negatives(d_ap, d_an, negs, margin=1.0)
        assert d_an[0, idx[0, 0]] == 1.3 and bool(semi[0, 0])


def test_semihard_prefers_the_closest_of_several_and_respects_the_mask() -> None:
    d_ap = torch.tensor([[1.0]])
    d_an = torch.tensor([[1.8, 0.2, 1.4, 1.6]])
    idx, _ = semihard_negatives(d_ap, d_an, torch.ones(1, 4, dtype=torch.bool), 1.0)
    assert int(idx) == 2
    idx, _ = semihard_negatives(d_ap, d_an, torch.tensor([[True, True, False, True]]), 1.0)
    assert int(idx) == 3  # 1.4 is not a negative of this anchor


def test_fallback_is_the_hardest_negative() -> None:
    d_ap = torch.tensor([[1.0]])
    d_an = torch.tensor([[3.0, 0.7, 0.4, 2.5]])  # nothing inside (1, 2)
    idx, semi = semihard_negatives(d_ap, d_an, torch.ones(1, 4, dtype=torch.bool), 1.0)
    assert int(idx) == 2 and not bool(semi)


def _line(*xs: float) -> torch.Tensor:
    return torch.tensor(xs).reshape(-1, 1)


def test_triplet_loss_value_and_masks() -> None:
    # anchor 0 at 0, positive at 1 (d = 1), negatives at squared distances 0.5 (hard), 1.3 (semi), 2.5 (easy)
    x = _line(0.0, 1.0, 0.5 ** 0.5, 1.3 ** 0.5, 2.5 ** 0.5).requires_grad_()
    y = torch.tensor([0, 0, 1, 2, 3])
    only_first = torch.tensor([True, False, False, False, False])
    loss, stats = triplet_loss(x, x, y, y, 1.0, anchor_mask=only_first, same=True)
    torch.testing.assert_close(loss, torch.tensor(1.0 - 1.3 + 1.0))
    assert int(stats["triplets"]) == 1 and float(stats["semihard"]) == 1.0
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the semi-hard negative absent: the fallback is the hardest remaining one (0.5)
    present = torch.tensor([True, True, True, False, True])
    loss, stats = triplet_loss(x, x, y, y, 1.0, anchor_mask=only_first & present, other_mask=present, same=True)
    torch.testing.assert_close(loss, torch.tensor(1.0 - 0.5 + 1.0))
    assert float(stats["semihard"]) == 0.0


def test_intra_term_never_uses_the_anchor_as_its_own_positive() -> None:
    x = _line(0.0, 5.0)
    loss, stats = triplet_loss(x, x, torch.tensor([0, 1]), torch.tensor([0, 1]), 1.0, same=True)
    assert int(stats["triplets"]) == 0 and float(loss) == 0.0


def test_inter_term_counts_the_paired_sample_as_positive() -> None:
    a, b = _line(0.0, 3.0), _line(0.0, 3.0)
    loss, stats = triplet_loss(a, b, torch.tensor([0, 1]), torch.tensor([0, 1]), 1.0)
    assert int(stats["triplets"]) == 2 and float(loss) == 0.0  # d(a,p) = 0, d(a,n) = 9: easy


def test_no_valid_triplet_gives_a_differentiable_zero() -> None:
    x = _line(0.0, 1.0).requires_grad_()
    loss, _ = triplet_loss(x, x, torch.tensor([0, 0]), torch.tensor([0, 0]), 1.0, same=True)  # no negatives
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def _brute_force(d_ap: torch.Tensor, d_an: torch.Tensor, neg: torch.Tensor, margin: float):
    """The definition, one (anchor, positive) at a time: the closest negative inside the band, else the hardest."""
    a_n, p_n = d_ap.shape
    idx = torch.zeros(a_n, p_n, dtype=torch.long)
    semi = torch.zeros(a_n, p_n, dtype=torch.bool)
    for a in range(a_n):
        negs = [k for k in range(d_an.shape[1]) if neg[a, k]]
        hard = min(negs, key=lambda k: (d_an[a, k].item(), k)) if negs else 0
        for p in range(p_n):
            band = [k for k in negs if d_ap[a, p] < d_an[a, k] < d_ap[a, p] + margin]
            if band:
                idx[a, p], semi[a, p] = min(band, key=lambda k: (d_an[a, k].item(), k)), True
            else:
                idx[a, p] = hard
    return idx, semi


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mining_matches_the_definition_on_random_batches(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, generator=g)
    d = squared_distances(x, x).round(decimals=1)  # rounding makes ties, which go to the lowest column
    y = torch.randint(0, 3, (12,), generator=g)
    neg = ~same_label(y, y)
    neg[0] = False  # an anchor without negatives
    idx, semi = semihard_negatives(d, d, neg, margin=1.0)
    ref_idx, ref_semi = _brute_force(d, d, neg, 1.0)
    assert torch.equal(semi, ref_semi)
    assert torch.equal(idx, ref_idx)


def test_compiled_mining_equals_the_torch_path_at_size() -> None:
    """Issue 16: the CPU kernel chooses what torch's sort + searchsorted choose: ties, masked rows, an anchor
    without negatives, and pairs exactly at the band's edges included."""
    from commonspace.losses.triplet import _semihard_torch

    g = torch.Generator().manual_seed(3)
    d = (torch.rand(300, 280, generator=g) * 4 * 16).round() / 16  # many exact ties
    d_ap = (torch.rand(300, 250, generator=g) * 4 * 16).round() / 16
    d[7, :40] = -0.0  # ties with +0.0 in the positives
    d_ap[7, :10] = 0.0
    neg = torch.rand(300, 280, generator=g) < 0.8
    neg[5] = False
    for margin in (0.25, 1.0, 0.1):
        idx, semi = semihard_negatives(d_ap, d, neg, margin)
        ref_idx, ref_semi = _semihard_torch(d_ap, d, neg, margin)
        assert torch.equal(semi, ref_semi) and torch.equal(idx, ref_idx)
    assert semi.any() and not semi.all()
