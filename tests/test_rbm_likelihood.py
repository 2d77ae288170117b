"""CD and PCD against the exact likelihood of tiny RBMs (every visible state enumerated).

For a Bernoulli RBM ``p(v) = exp(-F(v)) / Z`` with ``log Z = logsumexp_v -F(v)`` over all ``2^n`` states, so
the exact negative log-likelihood of a data set is ``mean F(v_data) + log Z`` and its gradient is
``d/dtheta [mean F(v_data) - sum_v p(v) F(v)]`` with ``p`` held fixed (the module docstring of
``commonspace.nn.rbm``). The expected CD-k gradient is the same with ``p`` replaced by ``q_k``, the empirical
distribution pushed ``k`` times through the Gibbs transition matrix ``T(v, v') = sum_h p(h | v) p(v' | h)``;
both are computed here by enumeration and compared with what the library's ``cd_loss`` / ``pcd_loss`` give.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from commonspace.nn.rbm import RBM, MultimodalRBM

DT = torch.float64
N_VIS, N_HID = 6, 4
#: three prototypes over 6 bits; 10% bit noise makes the data set's entropy about 2.4 nats (of 6 log 2 = 4.16)
PROTOTYPES = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0]], dtype=DT)


def _states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=DT)


STATES, HIDDEN = _states(N_VIS), _states(N_HID)


def _data(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = PROTOTYPES[torch.randint(0, len(PROTOTYPES), (n,), generator=g)]
    flips = (torch.rand(n, N_VIS, generator=g, dtype=DT) < 0.1).to(DT)
    return (rows - flips).abs()


DATA = _data()


def _empirical(v: torch.Tensor) -> torch.Tensor:
    """The data set as a distribution over STATES."""
    return (v[:, None, :] == STATES[None]).all(-1).to(DT).mean(0)


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def _split(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return v[:, : N_VIS // 2], v[:, N_VIS // 2:]


def _free_energy(model: RBM | MultimodalRBM, v: torch.Tensor) -> torch.Tensor:
    return model.free_energy(v) if isinstance(model, RBM) else model.free_energy(*_split(v))


def _log_z(model: RBM | MultimodalRBM) -> torch.Tensor:
    return torch.logsumexp(-_free_energy(model, STATES), 0)


def _nll(model: RBM | MultimodalRBM, v: torch.Tensor = DATA) -> float:
    with torch.no_grad():
        return float(_free_energy(model, v).mean() + _log_z(model))


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


def _grad_against(model: RBM | MultimodalRBM, v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Gradient of ``mean F(v) - sum_s q(s) F(s)``: the exact NLL gradient for q = p, expected CD-k for q_k."""
    model.zero_grad()
    (_free_energy(model, v).mean() - (q.detach() * _free_energy(model, STATES)).sum()).backward()
    return _flat_grad(model)


def _model_probs(model: RBM | MultimodalRBM) -> torch.Tensor:
    return torch.softmax(-_free_energy(model, STATES), 0)


def _exact_grad(model: RBM | MultimodalRBM, v: torch.Tensor = DATA) -> torch.Tensor:
    return _grad_against(model, v, _model_probs(model))


def _bernoulli_prob(states: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``P[i, s] = prod_d mean[i, d]^s_d (1 - mean[i, d])^(1 - s_d)`` for every row i and state s."""
    return torch.exp((states[None] * mean[:, None].log() + (1 - states[None]) * (1 - mean[:, None]).log()).sum(-1))


def _expected_cd_grad(rbm: RBM, v: torch.Tensor, k: int) -> torch.Tensor:
    """The exact expectation of the CD-k gradient (no sampling): q_k = empirical T^k."""
    with torch.no_grad():
        t = _bernoulli_prob(HIDDEN, rbm.hidden_prob(STATES)) @ _bernoulli_prob(STATES, rbm.visible_mean(HIDDEN))
        q = _empirical(v) @ torch.linalg.matrix_power(t, k)
    return _grad_against(rbm, v, q)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _rbm(scale: float, n_chains: int = 0, seed: int = 1) -> RBM:
    """Weights and biases N(0, scale^2): small scale mixes in one Gibbs step, large scale does not."""
    torch.manual_seed(seed)
    rbm = RBM(N_VIS, N_HID, n_chains=n_chains, init_std=scale).double()
    with torch.no_grad():
        rbm.v_bias.normal_(0.0, scale)
        rbm.h_bias.normal_(0.0, scale)
    return rbm


# ----------------------------------------------------------------------------- the enumeration itself
def test_log_z_by_visible_states_equals_the_sum_over_all_joint_states():
    rbm = _rbm(1.0)
    with torch.no_grad():
        energy = (-(STATES @ rbm.v_bias)[:, None] - (HIDDEN @ rbm.h_bias)[None, :]
                  - STATES @ rbm.weight.T @ HIDDEN.T)
        assert torch.allclose(_log_z(rbm), torch.logsumexp(-energy.flatten(), 0), atol=1e-10)
    # the NLL is a cross-entropy, so never below the data set's entropy
    assert _nll(rbm) > _entropy(_empirical(DATA))


# ------------------------------------------------------------------------------- CD-k against the exact
@pytest.mark.parametrize("k", [1, 3])
def test_cd_loss_gradient_is_the_expected_cd_k_gradient(k):
    """The library's CD-k (a sampled loss) averages to the enumerated CD-k expectation: sign and statistics."""
    rbm = _rbm(1.0)
    torch.manual_seed(0)
    rbm.zero_grad()
    rbm.cd_loss(DATA.repeat(400, 1), k)[0].backward()  # 25,600 chains: Monte Carlo error of 1-3%
    assert _rel_err(_flat_grad(rbm), _expected_cd_grad(rbm, DATA, k)) < 0.05


def test_cd1_is_close_to_the_exact_gradient_for_small_weights():
    rbm = _rbm(0.1)
    torch.manual_seed(0)
    rbm.zero_grad()
    rbm.cd_loss(DATA.repeat(400, 1), 1)[0].backward()
    assert _cos(_flat_grad(rbm), _exact_grad(rbm)) > 0.99


def test_cd_k_approaches_the_exact_gradient_as_k_grows():
    """With large weights one Gibbs step does not mix: CD-1 is biased, and the bias shrinks with k."""
    rbm = _rbm(2.0)
    exact = _exact_grad(rbm)
    errs = [_rel_err(_expected_cd_grad(rbm, DATA, k), exact) for k in (1, 2, 3, 5, 10, 30)]
    assert errs[0] > 0.3  # the setting is one where CD-1 is visibly biased ...
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False))  # ... and longer chains are closer
    assert errs[-1] < 0.01
    assert _cos(_expected_cd_grad(rbm, DATA, 1), exact) > 0.9  # biased, yet still pointing the same way
    # the sampled library CD-k shows the same: k = 10 is far closer than k = 1
    torch.manual_seed(0)
    sampled = []
    for k in (1, 10):
        rbm.zero_grad()
        rbm.cd_loss(DATA.repeat(400, 1), k)[0].backward()
        sampled.append(_rel_err(_flat_grad(rbm), exact))
    assert sampled[0] > 0.3 and sampled[1] < 0.1


# ------------------------------------------------------------------------------- PCD against the exact
def _pcd_gradient(model: RBM | MultimodalRBM, burn_in: int = 30, average: int = 20, **kw: object) -> torch.Tensor:
    """Mean pcd_loss gradient at fixed parameters, after the chains have run ``burn_in`` steps."""
    call = (lambda: model.pcd_loss(DATA, 1, **kw)) if isinstance(model, RBM) else (
        lambda: model.pcd_loss(*_split(DATA), 1, **kw))
    with torch.no_grad():
        for _ in range(burn_in):
            call()
    total = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=DT)
    for _ in range(average):
        model.zero_grad()
        call().backward()
        total += _flat_grad(model)
    return total / average


def test_pcd_with_many_long_chains_estimates_the_exact_gradient():
    """Persistent chains at fixed parameters sample the model, so PCD is unbiased where CD-1 is not."""
    rbm = _rbm(2.0, n_chains=4096)
    torch.manual_seed(0)
    exact = _exact_grad(rbm)
    pcd = _pcd_gradient(rbm)
    assert _rel_err(pcd, exact) < 0.03
    # chains restarted at the data each call (CD-1) would be off by the CD-1 bias of the test above
    assert _rel_err(_expected_cd_grad(rbm, DATA, 1), exact) > 10 * _rel_err(pcd, exact)


def _multimodal(scale: float, n_chains: int) -> MultimodalRBM:
    torch.manual_seed(2)
    m = MultimodalRBM(N_VIS // 2, N_VIS // 2, N_HID, n_chains=n_chains, init_std=scale).double()
    with torch.no_grad():
        for b in (m.bias_x, m.bias_y, m.bias_h):
            b.normal_(0.0, scale)
    return m


def test_multimodal_pcd_estimates_the_exact_gradient_of_the_selected_rows():
    """The MRBM's use: the positive phase on the complete rows only (``weight``), chains over both groups."""
    m = _multimodal(2.0, n_chains=4096)
    torch.manual_seed(0)
    keep = torch.arange(DATA.shape[0]) % 2 == 0
    pcd = _pcd_gradient(m, weight=keep)
    exact = _exact_grad(m, DATA[keep])
    assert _rel_err(pcd, exact) < 0.03


# ------------------------------------------------------------------------------------ PCD learning
def _train(model: RBM | MultimodalRBM, method: str, steps: int = 300, lr: float = 0.4, batch: int = 16,
           seed: int = 0) -> float:
    """SGD on minibatches of DATA with the library's PCD loss, or with the exact NLL gradient ("exact").

    The learning rate decays linearly to 0 (Tieleman 2008): at a constant rate the persistent chains lag the
    moving model and the final NLL of PCD scatters by about 0.1 nats from seed to seed; decayed, PCD ends
    within 0.03 nats of the exact-gradient run on every seed tried (0-7).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / steps)
    for _ in range(steps):
        v = DATA[torch.randint(0, DATA.shape[0], (batch,), generator=g)]
        opt.zero_grad()
        if method == "exact":
            loss = _free_energy(model, v).mean() - (_model_probs(model).detach() * _free_energy(model, STATES)).sum()
        elif isinstance(model, RBM):
            loss = model.pcd_loss(v, 1)
        else:
            loss = model.pcd_loss(*_split(v), 1)
        loss.backward()
        opt.step()
        schedule.step()
    return _nll(model)


@pytest.mark.parametrize("kind", ["rbm", "multimodal"])
def test_pcd_lowers_the_exact_nll_like_the_exact_gradient_does(kind):
    def fresh() -> RBM | MultimodalRBM:
        torch.manual_seed(0)
        if kind == "rbm":
            return RBM(N_VIS, N_HID, n_chains=100).double()
        return MultimodalRBM(N_VIS // 2, N_VIS // 2, N_HID, n_chains=100).double()

    start = _nll(fresh())
    assert abs(start - N_VIS * torch.log(torch.tensor(2.0)).item()) < 0.05  # near-uniform model at init
    m = DATA.mean(0)
    independent = float(-(m * m.log() + (1 - m) * (1 - m).log()).sum())  # the best visible-bias-only model
    exact = _train(fresh(), "exact")
    pcd = _train(fresh(), "pcd")
    assert pcd < start - 1.0  # from 4.16 nats to about 2.8
    assert pcd < independent - 0.5  # the hidden units capture the prototypes, not just the pixel marginals
    assert abs(pcd - exact) < 0.06  # as good as following the exact likelihood gradient
    assert pcd > _entropy(_empirical(DATA))
