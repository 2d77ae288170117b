"""Aligned attention blocks by hand (thesis Eq. 3.1.11-3.1.14, RVS Eq. 3.3.1-3.3.6) and the ablation switches."""

from __future__ import annotations

import pytest
import torch

from commonspace.data.dataset import DataError
from commonspace.nn.attention import AlignedAttention, ReferenceAttention

G_I = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]])
G_S = torch.tensor([[1.0, 0.5, -0.5], [-2.0, 1.0, 0.75]])
W_I = torch.tensor([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]])
W_S = torch.tensor([[0.2, 0.1], [-0.3, 0.5], [0.4, -0.1]])
W_IS = torch.tensor([[-0.4, 0.2], [0.1, 0.3], [0.2, 0.2]])
W_E = torch.tensor([[1.0, -0.5, 0.25], [0.5, 2.0, -1.0]])  # (hidden, dim): e = tanh(.) @ W_E
W_SE = torch.tensor([[-1.0, 0.5, 0.75], [0.25, -2.0, 1.0]])


def _set(block: torch.nn.Module, **mats: torch.Tensor) -> None:
    with torch.no_grad():
        for name, value in mats.items():
            getattr(block, name).copy_(value)


def _softmax_by_hand(e: torch.Tensor) -> torch.Tensor:
    return torch.exp(e) / torch.exp(e).sum(1, keepdim=True)  # Eq. 3.1.12


def test_block_matches_equations_by_hand() -> None:
    block = AlignedAttention(3, hidden=2)
    _set(block, w_i=W_I, w_s=W_S, w_is=W_IS, w_e=W_E)
    e = torch.tanh(G_I @ W_I + G_S @ W_S + (G_I * G_S) @ W_IS) @ W_E  # Eq. 3.1.11, elementwise g_i * g_s
    a = _softmax_by_hand(e)
    out_i, out_s = block(G_I, G_S)
    torch.testing.assert_close(block.alpha(G_I, G_S), a)
    torch.testing.assert_close(out_i, G_I + a * G_I)  # Eq. 3.1.13
    torch.testing.assert_close(out_s, G_S + a * G_S)  # Eq. 3.1.14
    torch.testing.assert_close(a.sum(1), torch.ones(2))  # softmax over the embedding dimensions


def test_block_leaves_samples_without_partner_unchanged() -> None:
    block = AlignedAttention(3, hidden=2)
    both = torch.tensor([True, False])
    out_i, out_s = block(G_I, G_S, both)
    assert torch.equal(out_i[1], G_I[1]) and torch.equal(out_s[1], G_S[1])
    full_i, full_s = block(G_I, G_S)
    assert torch.equal(out_i[0], full_i[0]) and torch.equal(out_s[0], full_s[0])


@pytest.mark.parametrize("drop", ["w_i", "w_s", "w_is"])
def test_ablation_removes_exactly_that_matrix(drop: str) -> None:
    flags = {"use_wi": drop != "w_i", "use_ws": drop != "w_s", "use_wis": drop != "w_is"}
    block = AlignedAttention(3, hidden=2, **flags)
    names = {n for n, _ in block.named_parameters()}
    assert names == {"w_i", "w_s", "w_is", "w_e"} - {drop}
    assert sum(p.numel() for p in block.parameters()) == 3 * 2 * 2 + 2 * 3
    assert drop not in block.state_dict()
    mats = {"w_i": W_I, "w_s": W_S, "w_is": W_IS, "w_e": W_E}
    _set(block, **{k: v for k, v in mats.items() if k != drop})
    terms = {"w_i": G_I @ W_I, "w_s": G_S @ W_S, "w_is": (G_I * G_S) @ W_IS}
    pre = sum(v for k, v in terms.items() if k != drop)
    a = _softmax_by_hand(torch.tanh(pre) @ W_E)
    torch.testing.assert_close(block(G_I, G_S)[0], G_I + a * G_I)


def test_ablation_of_everything_is_refused() -> None:
    with pytest.raises(DataError):
        AlignedAttention(3, use_wi=False, use_ws=False, use_wis=False)


def test_reference_block_matches_equations_by_hand() -> None:
    block = ReferenceAttention(3, hidden=2)
    assert {n for n, _ in block.named_parameters()} == {"w_i", "w_s", "w_is", "w_se"}  # W_ie is passed in
    _set(block, w_i=W_I, w_s=W_S, w_is=W_IS, w_se=W_SE)
    h = torch.tanh(G_I @ W_I + G_S @ W_S + (G_I * G_S) @ W_IS)
    a_ie, a_se = _softmax_by_hand(h @ W_E), _softmax_by_hand(h @ W_SE)  # Eq. 3.3.1-3.3.4
    out_i, out_s = block(G_I, G_S, w_ie=W_E)
    torch.testing.assert_close(out_i, G_I + a_ie * G_I)  # Eq. 3.3.5
    torch.testing.assert_close(out_s, G_S + a_se * G_S)  # Eq. 3.3.6
    # without W_ie (a block added after the first stage) the reference passes through untouched
    out_i, out_s2 = block(G_I, G_S, w_ie=None)
    assert torch.equal(out_i, G_I)
    torch.testing.assert_close(out_s2, out_s)
