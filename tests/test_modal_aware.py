"""The modal-aware operation: shapes, kernel weights, ablation switches (parameters not created), identity at
initialisation, masks, and that each modality's attention depends on the other."""

from __future__ import annotations

import itertools

import pytest
import torch

from commonspace.nn.modal_aware import AttentionNetwork, KernelNetwork, ModalAwareBlock, kernel_is_inert

B, C, H, W, D = 3, 6, 4, 5, 7


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g), torch.randn(B, D, generator=g)


def perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Random values everywhere (the zero-initialised W_z would hide the kernel's effect)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("use_kn,use_an", list(itertools.product([True, False], repeat=2)))
def test_block_shapes(use_kn: bool, use_an: bool) -> None:
    torch.manual_seed(0)
    block = ModalAwareBlock(C, D, use_kn, use_an, kernel_width=4)
    perturb(block)
    x, t = inputs()
    y, s = block(x, t)
    assert y.shape == (B, C, H, W) and s.shape == (B, D)
    if not (use_kn or use_an):
        assert torch.equal(y, x) and torch.equal(s, t)


def test_kernel_weights_sum_to_one_over_positions() -> None:
    torch.manual_seed(0)
    kn = KernelNetwork(C, D, width=4)
    perturb(kn)
    x, t = inputs()
    k = kn.kernel(x, t)
    assert k.shape == (B, H * W)
    assert bool((k >= 0).all())
    assert torch.allclose(k.sum(1), torch.ones(B), atol=1e-6)
    # the kernel is theta(x_i) . phi(t) under a softmax over positions
    logits = torch.einsum("bcn,bc->bn", kn.theta(x).flatten(2), kn.phi(t))
    assert torch.allclose(k, torch.softmax(logits, 1), atol=1e-6)


def test_kernel_network_equations() -> None:
    torch.manual_seed(0)
    kn = KernelNetwork(C, D, width=4)
    perturb(kn)
    x, t = inputs()
    y, s = kn(x, t)
    k = kn.kernel(x, t)
    gx = kn.g(x).flatten(2)
    reweighed = (gx * k.unsqueeze(1) * (H * W)).reshape(B, -1, H, W)
    assert torch.allclose(y, x + kn.w_z(reweighed), atol=1e-5)
    assert torch.allclose(s, t + kn.w_u((gx * k.unsqueeze(1)).sum(2)), atol=1e-5)


def test_kernel_network_starts_as_identity() -> None:
    torch.manual_seed(0)
    x, t = inputs()
    y, s = KernelNetwork(C, D)(x, t)
    assert torch.equal(y, x) and torch.equal(s, t)


def test_missing_modality_gives_nothing() -> None:
    torch.manual_seed(0)
    kn = KernelNetwork(C, D, width=4)
    perturb(kn)
    x, t = inputs()
    pv = torch.tensor([True, True, False])
    pt = torch.tensor([False, True, True])
    y, s = kn(x * pv.reshape(-1, 1, 1, 1), t * pt.reshape(-1, 1), pv, pt)
    assert torch.allclose(y[0], x[0])  # no text: the image is not reweighed
    assert torch.equal(s[0], torch.zeros(D))  # the missing text stays zero
    assert torch.equal(y[2], torch.zeros(C, H, W))  # the missing image stays zero
    assert torch.allclose(s[2], t[2])  # no image: the text gets no pooled image feature
    assert not torch.allclose(y[1], x[1]) and not torch.allclose(s[1], t[1])


def test_attention_maps_use_both_modalities() -> None:
    torch.manual_seed(0)
    an = AttentionNetwork(C, D, reduction=2)
    perturb(an)
    x, t = inputs()
    a_v, a_t = an.attention(x, t)
    assert a_v.shape == (B, C) and a_t.shape == (B, D)
    assert bool(((a_v > 0) & (a_v < 2)).all() and ((a_t > 0) & (a_t < 2)).all())
    y, s = an(x, t)
    assert torch.allclose(y, x * a_v[:, :, None, None]) and torch.allclose(s, t * a_t)
    a_v2, _ = an.attention(x, t + 1.0)  # the image's channel attention sees the text
    assert not torch.allclose(a_v, a_v2)


def test_switches_remove_exactly_their_parameters() -> None:
    names = {k: {n for n, _ in ModalAwareBlock(C, D, kn, an).named_parameters()}
             for k, (kn, an) in {"full": (True, True), "no_kn": (False, True), "no_an": (True, False),
                                 "none": (False, False)}.items()}
    kn_names = {n for n in names["full"] if n.startswith("kn.")}
    an_names = {n for n in names["full"] if n.startswith("an.")}
    assert kn_names and an_names and kn_names | an_names == names["full"]
    assert names["no_kn"] == names["full"] - kn_names
    assert names["no_an"] == names["full"] - an_names
    assert names["none"] == set()


def test_gradients_reach_every_part() -> None:
    torch.manual_seed(0)
    block = ModalAwareBlock(C, D, kernel_width=4, reduction=2)
    perturb(block)
    x, t = inputs()
    y, s = block(x, t)
    (y.pow(2).sum() + s.pow(2).sum()).backward()
    for n, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("use_kn,use_an", [(True, True), (False, True), (True, False)])
def test_block_starts_as_identity(use_kn: bool, use_an: bool) -> None:
    """Issue 13: the gates start at exactly 1 (a plain sigmoid started at 0.5 and halved every feature twice)."""
    torch.manual_seed(0)
    block = ModalAwareBlock(C, D, use_kn, use_an, kernel_width=4, reduction=2)
    x, t = inputs()
    if use_an:
        a_v, a_t = block.an.attention(x, t)
        assert torch.equal(a_v, torch.ones(B, C)) and torch.equal(a_t, torch.ones(B, D))
    y, s = block(x, t)
    assert torch.equal(y, x) and torch.equal(s, t)


def test_attention_can_suppress_and_amplify() -> None:
    an = AttentionNetwork(C, D, reduction=2)
    with torch.no_grad():
        an.excite.bias.copy_(torch.linspace(-8, 8, C + D))
    a_v, a_t = an.attention(*inputs())
    assert float(a_v.min()) < 0.01 and float(a_t.max()) > 1.99


def test_kernel_is_constant_on_one_position() -> None:
    """On 1 x 1 maps the softmax over one position is 1: theta and phi get exactly zero gradient."""
    assert kernel_is_inert(1, 1) and not kernel_is_inert(1, 2) and not kernel_is_inert(4, 5)
    torch.manual_seed(0)
    kn = KernelNetwork(C, D, width=4)
    perturb(kn)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(B, C, 1, 1, generator=g), torch.randn(B, D, generator=g)
    assert torch.equal(kn.kernel(x, t), torch.ones(B, 1))
    y, s = kn(x, t)
    (y.pow(2).sum() + s.pow(2).sum()).backward()
    for name in ("theta", "phi"):
        for p in getattr(kn, name).parameters():
            assert p.grad is None or not bool(p.grad.any()), name
    # on a 4 x 5 map the same parameters do learn
    kn.zero_grad()
    y, s = kn(*inputs())
    (y.pow(2).sum() + s.pow(2).sum()).backward()
    assert all(bool(p.grad.abs().sum() > 0) for n in ("theta", "phi") for p in getattr(kn, n).parameters())
