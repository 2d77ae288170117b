"""Fusion baselines: MCB equals the count sketch of the outer product (exact) and preserves inner products in
expectation; GMU gates lie in [0, 1] and mix the two tanh branches; Concat; the factory."""

from __future__ import annotations

import pytest
import torch

from commonspace.data.dataset import DataError
from commonspace.nn.fusion import ConcatFusion, GMUFusion, MCBFusion, count_sketch, make_fusion


def test_count_sketch_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0]])
    h = torch.tensor([0, 2, 0])
    s = torch.tensor([1.0, -1.0, -1.0])
    # bin 0: 1*1 + (-1)*3 = -2; bin 1: 0; bin 2: -2
    assert torch.allclose(count_sketch(x, h, s, 3), torch.tensor([[-2.0, 0.0, -2.0]]))


def test_mcb_equals_count_sketch_of_outer_product() -> None:
    torch.manual_seed(0)
    dv, dt, d = 5, 4, 7
    mcb = MCBFusion(dv, dt, dim=d, seed=3, normalize=False)
    x, y = torch.randn(6, dv), torch.randn(6, dt)
    outer = (x.unsqueeze(2) * y.unsqueeze(1)).reshape(6, -1)  # x y^T flattened, index i * dt + j
    h = ((mcb.h_v.reshape(-1, 1) + mcb.h_t.reshape(1, -1)) % d).reshape(-1)
    s = (mcb.s_v.reshape(-1, 1) * mcb.s_t.reshape(1, -1)).reshape(-1)
    expected = count_sketch(outer, h, s, d)
    assert torch.allclose(mcb(x, y), expected, atol=1e-5)
    assert torch.allclose(mcb.bilinear(x, y), expected, atol=1e-5)


def test_mcb_inner_product_unbiased_over_sketches() -> None:
    # E_sketch <phi(x, y), phi(x', y')> = <x y^T, x' y'^T> = <x, x'> <y, y'>
    g = torch.Generator().manual_seed(0)
    x, x2 = torch.randn(2, 3, generator=g)
    y, y2 = torch.randn(2, 4, generator=g)
    est = []
    for seed in range(600):
        mcb = MCBFusion(3, 4, dim=8, seed=seed, normalize=False)
        p = mcb(torch.stack([x, x2]), torch.stack([y, y2]))
        est.append(float(p[0] @ p[1]))
    target = float((x @ x2) * (y @ y2))
    mean = torch.tensor(est).mean().item()
    stderr = torch.tensor(est).std().item() / len(est) ** 0.5
    assert abs(mean - target) < 4 * stderr + 1e-3


def test_mcb_normalised_output_and_fixed_sketch() -> None:
    mcb = MCBFusion(6, 5, dim=32, seed=1)
    out = mcb(torch.randn(4, 6), torch.randn(4, 5))
    assert out.shape == (4, 32) and mcb.out_dim == 32
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-4)
    again = MCBFusion(6, 5, dim=32, seed=1)
    assert torch.equal(again.h_v, mcb.h_v) and torch.equal(again.s_t, mcb.s_t)
    assert set(dict(mcb.named_buffers())) == {"h_v", "s_v", "h_t", "s_t"} and not list(mcb.parameters())


def test_gmu_gates_and_mixture() -> None:
    torch.manual_seed(0)
    gmu = GMUFusion(6, 4, width=10)
    xv, xt = 5 * torch.randn(32, 6), 5 * torch.randn(32, 4)
    z = gmu.gate(xv, xt)
    assert z.shape == (32, 10)
    assert bool(((z >= 0) & (z <= 1)).all())
    expected = z * torch.tanh(gmu.w_v(xv)) + (1 - z) * torch.tanh(gmu.w_t(xt))
    assert torch.allclose(gmu(xv, xt), expected)
    assert bool((gmu(xv, xt).abs() <= 1).all())  # a convex mix of two tanh units


def test_concat_and_factory() -> None:
    cat = ConcatFusion(3, 2)
    a, b = torch.randn(2, 3), torch.randn(2, 2)
    assert torch.equal(cat(a, b), torch.cat([a, b], 1)) and cat.out_dim == 5
    assert isinstance(make_fusion("gmu", 3, 2, gmu_width=7), GMUFusion)
    assert make_fusion("mcb", 3, 2, mcb_dim=16).out_dim == 16
    with pytest.raises(DataError, match="fusion"):
        make_fusion("sum", 3, 2)
