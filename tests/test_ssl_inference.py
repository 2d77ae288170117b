"""Mean-field inference of a missing modality in the MRBM / MDBN (issue 11 item 2) and the joint-code probe."""

from __future__ import annotations

import pytest
import torch

from commonspace.data import builtin
from commonspace.data.dataset import DataError
from commonspace.eval.probe import logistic_probe_many
from commonspace.models import create
from commonspace.nn.rbm import MultimodalRBM
from commonspace.train import TrainConfig, Trainer
from commonspace.train.checkpoint import load_model


def _rbm(visible: tuple[str, str] = ("bernoulli", "gaussian")) -> MultimodalRBM:
    torch.manual_seed(0)
    rbm = MultimodalRBM(5, 4, 6, visible, sigma=(1.0, 0.7)).double()
    with torch.no_grad():
        for p in rbm.parameters():
            p.copy_(torch.randn(p.shape, dtype=p.dtype) * 0.5)
    return rbm


def _hand(rbm: MultimodalRBM, x: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x clamped, y absent: h0 = sigmoid(b + W^x x); then y = E[y | h], h = sigmoid(b + W^x x + W^y y / sigma)."""
    h = torch.sigmoid(rbm.bias_h + x @ rbm.weight_x.T)
    y = torch.zeros(x.shape[0], rbm.n_y, dtype=x.dtype)
    for _ in range(steps):
        y = rbm.bias_y + rbm.sigma[1] * h @ rbm.weight_y
        h = torch.sigmoid(rbm.bias_h + x @ rbm.weight_x.T + (y / rbm.sigma[1]) @ rbm.weight_y.T)
    return h, y


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_mean_field_inference_matches_a_hand_computation(steps: int) -> None:
    rbm = _rbm()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(7, 4, generator=g, dtype=torch.float64) * 50  # garbage where y is absent
    px = torch.ones(7, dtype=torch.bool)
    py = torch.tensor([0, 0, 0, 1, 1, 0, 1], dtype=torch.bool)
    with torch.no_grad():
        h, xf, yf = rbm.infer(x, y, px, py, steps)
        want_h, want_y = _hand(rbm, x, steps)
        miss = ~py
        torch.testing.assert_close(h[miss], want_h[miss])
        if steps:
            torch.testing.assert_close(yf[miss], want_y[miss])
        # complete rows: the joint posterior, their inputs untouched
        torch.testing.assert_close(h[py], rbm.hidden_prob(x, y, px, py)[py])
        torch.testing.assert_close(yf[py], y[py])
        torch.testing.assert_close(xf, x)


def test_inference_handles_either_modality_missing_and_neither_present() -> None:
    rbm = _rbm(("bernoulli", "bernoulli"))
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(4, 5, generator=g, dtype=torch.float64), torch.rand(4, 4, generator=g, dtype=torch.float64)
    px = torch.tensor([1, 0, 0, 1], dtype=torch.bool)
    py = torch.tensor([0, 1, 0, 1], dtype=torch.bool)
    with torch.no_grad():
        h, xf, yf = rbm.infer(x, y, px, py, 5)
        # row 1 has x missing: by the symmetry of the MRBM, the hand loop with the roles of x and y swapped
        hy = torch.sigmoid(rbm.bias_h + y[1:2] @ rbm.weight_y.T)
        for _ in range(5):
            xm = torch.sigmoid(rbm.bias_x + hy @ rbm.weight_x)
            hy = torch.sigmoid(rbm.bias_h + y[1:2] @ rbm.weight_y.T + xm @ rbm.weight_x.T)
        torch.testing.assert_close(h[1:2], hy)
        torch.testing.assert_close(xf[1:2], xm)
        # row 2 has neither: the hidden bias alone, nothing filled in
        torch.testing.assert_close(h[2], torch.sigmoid(rbm.bias_h))
        torch.testing.assert_close(xf[2], x[2])
        torch.testing.assert_close(yf[2], y[2])
    with pytest.raises(ValueError, match="steps"):
        rbm.infer(x, y, px, py, -1)


def test_infer_steps_is_a_checked_hyper_parameter_saved_in_the_config() -> None:
    m = create("mrbm", {"l": 4, "r": 3}, hidden=5, infer_steps=3)
    assert m.config["infer_steps"] == 3 and m.infer_steps == 3
    assert create("mdbn", {"l": 4, "r": 3}, layers_x=[3], layers_y=[3], shared=4).config["infer_steps"] == 10
    with pytest.raises(DataError, match="infer_steps"):
        create("mrbm", {"l": 4, "r": 3}, infer_steps=-2)


@pytest.fixture(scope="module")
def trained_mrbm():
    data = builtin.load("digits-halves")
    model = create("mrbm", data.dims, init_seed=0, hidden=64)
    cfg = TrainConfig.for_model(model, seed=0, progress=False, epochs=30, batch_size=128)
    Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
    return model.eval(), data


def test_inferred_codes_suit_the_joint_code_probe_better_than_dropped_input(trained_mrbm) -> None:
    """The paper's protocol: a probe fitted on the joint code of complete samples, tested on one half's code."""
    model, data = trained_mrbm
    tr, te = data.split("train"), data.split("test")
    trb, teb = data.batch(tr), data.batch(te)
    with torch.no_grad():
        tests = {f"{m}/{k}": (model.embed_with(teb.only([m]), k).numpy(), data.labels[te].numpy())
                 for m in ("left", "right") for k in (0, 10)}
        tests["both"] = (model.embed(teb).numpy(), data.labels[te].numpy())
        res = logistic_probe_many(model.embed(trb).numpy(), data.labels[tr].numpy(), tests)
        torch.testing.assert_close(model.embed(teb.only(["left"])), model.embed_with(teb.only(["left"]), 10))
    for m in ("left", "right"):
        assert res[f"{m}/10"]["error"] < res[f"{m}/0"]["error"] - 0.05, res
    assert res["both"]["error"] < min(res["left/10"]["error"], res["right/10"]["error"])


def test_reconstruct_fills_the_missing_half_better_than_its_mean(trained_mrbm) -> None:
    model, data = trained_mrbm
    b = data.batch(data.split("test"))
    truth = b.features["right"].reshape(len(b), -1)
    mean = data.features["right"][data.split("train")].mean(0)

    def mse(steps: int) -> float:
        model.infer_steps = steps
        try:
            with torch.no_grad():
                rec = model.reconstruct(b.only(["left"]))["right"].reshape(truth.shape)
        finally:
            model.infer_steps = 10
        return float(((rec - truth) ** 2).mean())

    baseline = float(((mean - truth) ** 2).mean())
    assert mse(10) < 0.9 * baseline
    assert mse(10) < mse(0) - 0.005  # the inferred code predicts the missing half better than H^x alone


def test_cli_and_api_leave_bernoulli_and_count_modalities_unstandardised(tmp_path) -> None:
    """Bernoulli pixels and replicated-softmax counts keep their scale; the Gaussian modality is standardised."""
    import numpy as np
    from typer.testing import CliRunner

    from commonspace.api import CommonSpace
    from commonspace.cli import app
    from commonspace.data.dataset import MultimodalDataset

    res = CliRunner().invoke(app, ["train", "--model", "mrbm", "--data", "digits-halves", "--epochs", "1",
                                   "--set", "hidden=8", "--out", str(tmp_path / "rbm"), "--no-progress"])
    assert res.exit_code == 0, res.output
    g = np.random.default_rng(0)
    y = g.integers(0, 2, 60)
    counts = g.poisson(np.where(y[:, None] == 1, [4.0, 1.0, 1.0], [1.0, 1.0, 4.0]))
    gauss = g.normal(size=(60, 3)) * 5 + 10
    path = tmp_path / "docs.npz"
    np.savez(path, x_img=gauss, x_txt=counts.astype(np.float64), labels=y)
    res = CliRunner().invoke(app, ["train", "--model", "mdbn", "--data", str(path), "--epochs", "1",
                                   "--set", 'visible=["gaussian","softmax"]', "--set", "layers_x=[4]",
                                   "--set", "layers_y=[4]", "--set", "shared=4", "--out", str(tmp_path / "dbn"),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert set(load_model(tmp_path / "dbn").standardizer.mean) == {"img"}
    assert load_model(tmp_path / "rbm").standardizer is None  # both halves are Bernoulli pixels
    res = CliRunner().invoke(app, ["embed", "--model", str(tmp_path / "dbn"), "--data", str(path),
                                   "--out", str(tmp_path / "emb.npz")])
    assert res.exit_code == 0, res.output
    data = MultimodalDataset({"img": torch.tensor(gauss, dtype=torch.float32),
                              "txt": torch.tensor(counts, dtype=torch.float32)}, labels=torch.tensor(y))
    cs = CommonSpace("mdbn", visible=["gaussian", "softmax"], layers_x=[4], layers_y=[4], shared=4, epochs=1)
    cs.fit(data)
    assert set(cs.standardizer_.mean) == {"img"}
