"""SSL similarity penalties (paper Eq. 2-3) against hand, numpy and scikit-learn computations."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from commonspace.losses import SIMILARITIES, canonical_correlations, cca_sim, cross_entropy_sim, similarity


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These matrices are tiny: on a loaded machine intra-op threads only add contention (gradcheck: 20 s -> 1 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


HX = [[0.2, 0.5, 0.9], [0.7, 0.1, 0.4]]
HY = [[0.3, 0.6, 0.8], [0.5, 0.2, 0.4]]


def _correlated(b: int, mx: int, my: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple:
    """Sigmoid activations of two views sharing a latent factor (so canonical correlations are well spread)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, 2, generator=g, dtype=dtype)
    hx = torch.sigmoid(z @ torch.randn(2, mx, generator=g, dtype=dtype) + torch.randn(b, mx, generator=g, dtype=dtype))
    hy = torch.sigmoid(z @ torch.randn(2, my, generator=g, dtype=dtype) + torch.randn(b, my, generator=g, dtype=dtype))
    return hx, hy


def _numpy_corrs(hx: np.ndarray, hy: np.ndarray, reg: float) -> np.ndarray:
    """Canonical correlations as singular values of the whitened cross-covariance, straight from the definition."""
    x = hx - hx.mean(0)
    y = hy - hy.mean(0)
    n = x.shape[0] - 1
    sxx = x.T @ x / n + reg * np.eye(x.shape[1])
    syy = y.T @ y / n + reg * np.eye(y.shape[1])
    sxy = x.T @ y / n

    def inv_sqrt(s: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(s)
        return v @ np.diag(w**-0.5) @ v.T

    return np.linalg.svd(inv_sqrt(sxx) @ sxy @ inv_sqrt(syy), compute_uv=False)


# ---- cross-entropy (Eq. 2) -------------------------------------------------------------------------------------


def test_cross_entropy_matches_hand_computation() -> None:
    hx, hy = torch.tensor(HX, dtype=torch.float64), torch.tensor(HY, dtype=torch.float64)
    log = math.log
    row1 = -(0.2 * log(0.3) + 0.8 * log(0.7) + 0.5 * log(0.6) + 0.5 * log(0.4) + 0.9 * log(0.8) + 0.1 * log(0.2))
    row2 = -(0.7 * log(0.5) + 0.3 * log(0.5) + 0.1 * log(0.2) + 0.9 * log(0.8) + 0.4 * log(0.4) + 0.6 * log(0.6))
    expected = (row1 + row2) / 2  # sum over units, mean over the 2 samples
    assert cross_entropy_sim(hx, hy).item() == pytest.approx(expected, rel=1e-12)
    assert similarity(hx, hy, "ce_xy").item() == pytest.approx(expected, rel=1e-12)
    # H(H^y || H^x) is the other direction, and differs.
    yx = similarity(hx, hy, "ce_yx").item()
    assert yx == pytest.approx(cross_entropy_sim(hy, hx).item(), rel=1e-12)
    assert abs(yx - expected) > 1e-3


def test_cross_entropy_minimised_at_hy_equal_hx() -> None:
    hx = torch.tensor(HX, dtype=torch.float64)
    hy = hx.clone().requires_grad_(True)
    value = cross_entropy_sim(hx, hy)
    (grad,) = torch.autograd.grad(value, hy)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-12)
    # and it is a minimum: any perturbation inside (0, 1) raises it
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        other = (hx + 0.05 * torch.randn(hx.shape, generator=g, dtype=hx.dtype)).clamp(0.01, 0.99)
        assert cross_entropy_sim(hx, other) > value


def test_cross_entropy_gradient_reaches_both_and_survives_saturation() -> None:
    hx = torch.tensor(HX, dtype=torch.float64, requires_grad=True)
    hy = torch.tensor([[0.0, 1.0, 0.8], [0.5, 0.2, 0.4]], dtype=torch.float64, requires_grad=True)
    value = cross_entropy_sim(hx, hy)
    assert torch.isfinite(value)
    value.backward()
    assert hx.grad is not None and hy.grad is not None
    assert torch.isfinite(hx.grad).all() and torch.isfinite(hy.grad).all()
    assert hx.grad.abs().sum() > 0 and hy.grad.abs().sum() > 0


def test_cross_entropy_is_batch_mean() -> None:
    hx, hy = _correlated(8, 4, 4, seed=1)
    doubled = cross_entropy_sim(torch.cat([hx, hx]), torch.cat([hy, hy]))
    assert doubled.item() == pytest.approx(cross_entropy_sim(hx, hy).item(), rel=1e-12)


# ---- CCA (Eq. 3) -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mx,my", [(3, 3), (4, 2), (2, 5)])
def test_cca_equals_minus_sum_of_numpy_correlations(mx: int, my: int) -> None:
    hx, hy = _correlated(64, mx, my, seed=2)
    reg = 1e-3
    expected = _numpy_corrs(hx.numpy(), hy.numpy(), reg)
    assert cca_sim(hx, hy, reg=reg).item() == pytest.approx(-expected.sum(), abs=1e-10)
    got = canonical_correlations(hx, hy, reg=reg).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_cca_matches_sklearn_cca() -> None:
    sk_cross = pytest.importorskip("sklearn.cross_decomposition")
    hx, hy = _correlated(500, 3, 3, seed=3)
    cca = sk_cross.CCA(n_components=3, scale=False, max_iter=100_000, tol=1e-14)
    xs, ys = cca.fit_transform(hx.numpy(), hy.numpy())
    sk_corrs = np.array([np.corrcoef(xs[:, k], ys[:, k])[0, 1] for k in range(3)])
    assert (sk_corrs > 0.05).all()  # a meaningful comparison: no vanishing correlation
    assert cca_sim(hx, hy, reg=1e-10).item() == pytest.approx(-sk_corrs.sum(), abs=1e-3)


def test_cca_float32_input_computed_in_float64() -> None:
    hx, hy = _correlated(64, 3, 3, seed=4)
    out = cca_sim(hx.float(), hy.float())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(cca_sim(hx.float().double(), hy.float().double()).item(), abs=1e-6)


def test_cca_gradcheck() -> None:
    hx, hy = _correlated(20, 3, 2, seed=5)
    hx.requires_grad_(True)
    hy.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: cca_sim(a, b, reg=1e-3), (hx, hy), eps=1e-6, atol=1e-6)


def test_cca_finite_gradient_for_identical_views() -> None:
    hx, _ = _correlated(32, 4, 4, seed=6)
    a = hx.clone().requires_grad_(True)
    b = hx.clone().requires_grad_(True)
    value = cca_sim(a, b)
    value.backward()
    assert value.item() == pytest.approx(-4.0, abs=1e-2)  # perfect correlation, shrunk slightly by reg
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # float32, the usual training dtype, too
    a32 = hx.float().requires_grad_(True)
    cca_sim(a32, hx.float()).backward()
    assert torch.isfinite(a32.grad).all()


def test_cca_finite_gradient_with_constant_units() -> None:
    hx, hy = _correlated(32, 4, 3, seed=7)
    hx = hx.clone()
    hx[:, 1] = 0.5  # zero variance: reg keeps S_xx invertible
    hx[:, 3] = 0.5  # two of them: S_xx has a repeated eigenvalue (reg), NaN for eigh-based whitening gradients
    hx.requires_grad_(True)
    hy.requires_grad_(True)
    value = cca_sim(hx, hy)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(hx.grad).all() and torch.isfinite(hy.grad).all()
    expected = _numpy_corrs(hx.detach().numpy(), hy.detach().numpy(), 1e-4)
    assert value.item() == pytest.approx(-expected.sum(), abs=1e-8)
    with pytest.raises(ValueError, match="reg > 0"):
        cca_sim(hx, hy, reg=0.0)


def test_cca_invariant_to_per_unit_affine_maps() -> None:
    hx, hy = _correlated(100, 3, 4, seed=8)
    g = torch.Generator().manual_seed(9)
    scale_x = torch.rand(3, generator=g, dtype=torch.float64) * 5 + 0.2
    scale_y = -(torch.rand(4, generator=g, dtype=torch.float64) * 5 + 0.2)  # negative: sign flips too
    shift_x = torch.randn(3, generator=g, dtype=torch.float64)
    shift_y = torch.randn(4, generator=g, dtype=torch.float64)
    reg = 1e-10
    base = cca_sim(hx, hy, reg=reg).item()
    moved = cca_sim(hx * scale_x + shift_x, hy * scale_y + shift_y, reg=reg).item()
    assert moved == pytest.approx(base, abs=1e-6)


def test_cca_lower_for_more_correlated_views() -> None:
    hx, _ = _correlated(200, 3, 3, seed=10)
    g = torch.Generator().manual_seed(11)
    close = hx + 0.01 * torch.randn(hx.shape, generator=g, dtype=hx.dtype)
    unrelated = torch.rand(hx.shape, generator=g, dtype=hx.dtype)
    assert cca_sim(hx, close) < cca_sim(hx, unrelated)


# ---- dispatch and input checks ---------------------------------------------------------------------------------


def test_similarity_dispatch_and_errors() -> None:
    assert SIMILARITIES == ("ce_xy", "ce_yx", "cca")
    hx, hy = _correlated(16, 3, 3, seed=12)
    assert similarity(hx, hy, "cca", reg=1e-3).item() == pytest.approx(cca_sim(hx, hy, reg=1e-3).item())
    assert similarity(hx, hy, "ce_xy", eps=1e-4).item() == pytest.approx(cross_entropy_sim(hx, hy, eps=1e-4).item())
    with pytest.raises(ValueError, match="ce_xy.*ce_yx.*cca"):
        similarity(hx, hy, "mse")
    with pytest.raises(ValueError, match="same samples"):
        cca_sim(hx, hy[:-1])
    with pytest.raises(ValueError, match="same hidden units"):
        cross_entropy_sim(hx, hy[:, :2])
    with pytest.raises(ValueError, match="at least 2"):
        cca_sim(hx[:1], hy[:1])


# ---- gradient direction of the cross-entropy (issue 11 item 3) -------------------------------------------------


def _ce_hand_grads(hx: torch.Tensor, hy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dhx and d/dhy of (1/B) sum -[hx log hy + (1 - hx) log(1 - hy)], by hand."""
    b = hx.shape[0]
    d_hx = -(torch.log(hy) - torch.log1p(-hy)) / b
    d_hy = (-hx / hy + (1.0 - hx) / (1.0 - hy)) / b
    return d_hx, d_hy


@pytest.mark.parametrize("grad", ["fitted", "both"])
def test_cross_entropy_gradient_of_each_variant_matches_hand_computation(grad: str) -> None:
    hx, hy = _correlated(5, 4, 4, seed=3)
    hx, hy = hx.clone().requires_grad_(True), hy.clone().requires_grad_(True)
    gx, gy = torch.autograd.grad(cross_entropy_sim(hx, hy, grad=grad), (hx, hy), allow_unused=True)
    want_x, want_y = _ce_hand_grads(hx.detach(), hy.detach())
    torch.testing.assert_close(gy, want_y, rtol=1e-10, atol=1e-12)
    if grad == "fitted":  # the target is a constant: no gradient reaches it
        assert gx is None or torch.count_nonzero(gx) == 0
    else:
        torch.testing.assert_close(gx, want_x, rtol=1e-10, atol=1e-12)
    # same value either way
    assert cross_entropy_sim(hx, hy, grad="fitted").item() == cross_entropy_sim(hx, hy, grad="both").item()


def test_cross_entropy_gradcheck_of_the_fitted_argument() -> None:
    hx, hy = _correlated(4, 3, 3, seed=5)
    for grad in ("fitted", "both"):
        assert torch.autograd.gradcheck(lambda y, g=grad: cross_entropy_sim(hx, y, grad=g),
                                        (hy.clone().requires_grad_(True),))
    assert torch.autograd.gradcheck(lambda x: cross_entropy_sim(x, hy, grad="both"),
                                    (hx.clone().requires_grad_(True),))


def test_similarity_passes_the_direction_and_ce_yx_fits_hx() -> None:
    hx, hy = _correlated(6, 3, 3, seed=1)
    hx, hy = hx.clone().requires_grad_(True), hy.clone().requires_grad_(True)
    gx, gy = torch.autograd.grad(similarity(hx, hy, "ce_yx", grad="fitted"), (hx, hy), allow_unused=True)
    assert gy is None or torch.count_nonzero(gy) == 0  # H(H^y || H^x): H^y is the target
    assert torch.count_nonzero(gx) == gx.numel()
    with pytest.raises(ValueError, match="grad="):
        cross_entropy_sim(hx, hy, grad="x")


# ---- shrunk covariances of the CCA term (issue 11 item 5) ------------------------------------------------------


def test_cca_shrinkage_matches_numpy_and_tames_chance_correlation() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(60, 5, generator=g, dtype=torch.float64)  # 5 shared factors seen through 40 units each
    hx, hy = (torch.sigmoid(2 * z @ torch.randn(5, 40, generator=g, dtype=torch.float64)
                            + torch.randn(60, 40, generator=g, dtype=torch.float64)) for _ in range(2))
    s = 0.3

    def corr_sum(a: torch.Tensor, b: torch.Tensor, shrink: float) -> float:
        x, y = a.numpy() - a.numpy().mean(0), b.numpy() - b.numpy().mean(0)
        n = x.shape[0] - 1
        sxx, syy, sxy = x.T @ x / n, y.T @ y / n, x.T @ y / n
        sxx = (1 - shrink) * sxx + shrink * np.diag(np.diag(sxx)) + 1e-4 * np.eye(40)
        syy = (1 - shrink) * syy + shrink * np.diag(np.diag(syy)) + 1e-4 * np.eye(40)

        def inv_sqrt(m: np.ndarray) -> np.ndarray:
            w, v = np.linalg.eigh(m)
            return v @ np.diag(w**-0.5) @ v.T

        return float(np.linalg.svd(inv_sqrt(sxx) @ sxy @ inv_sqrt(syy), compute_uv=False).sum())

    assert -cca_sim(hx, hy, shrink=s).item() == pytest.approx(corr_sum(hx, hy, s), rel=1e-8)
    assert canonical_correlations(hx, hy, shrink=s).sum().item() == pytest.approx(corr_sum(hx, hy, s), rel=1e-8)
    # 40 units on 60 samples: unshrunk, independent views (rows shuffled) look almost as correlated as the real
    # pairs; shrinkage restores a clear gap between them
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    raw_gap = corr_sum(hx, hy, 0.0) / corr_sum(hx, hy[perm], 0.0)
    shrunk_gap = corr_sum(hx, hy, s) / corr_sum(hx, hy[perm], s)
    assert raw_gap < 1.05 and shrunk_gap > raw_gap + 0.1
    part = hx[:, :3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: cca_sim(a, hy[:, :4], shrink=s), (part,))
    with pytest.raises(ValueError, match="shrink"):
        cca_sim(hx, hy, shrink=1.5)
