"""The speed paths of issue 16 against what they replace: the same numbers (or the same law), nothing lost.

* ``LeanSGD`` / ``LeanAdam`` (``make_sgd`` / ``make_adam``): the same bits as ``torch.optim`` over many steps, a
  state dict that round-trips, and no ``torch._dynamo`` import in a process that trains;
* ``TiedLinear.transposed``: the value and gradients of ``F.linear(y, W.t(), c)``.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from commonspace.nn.tied import TiedLinear
from commonspace.train.optim import LeanAdam, LeanSGD, make_adam, make_sgd


def _train(make, steps: int = 25, reload_at: int | None = None) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 3))
    opt = make(list(model.parameters()))
    x = torch.randn(32, 12)
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        opt.step()
        if i == reload_at:
            state = copy.deepcopy(opt.state_dict())
            opt = make(list(model.parameters()))
            opt.load_state_dict(state)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("nesterov,momentum,wd", [(True, 0.9, 0.0), (False, 0.9, 1e-3), (False, 0.0, 0.0)])
def test_lean_sgd_matches_torch_sgd_bit_for_bit(nesterov, momentum, wd):
    ref = _train(lambda p: torch.optim.SGD(p, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd))
    ours = _train(lambda p: make_sgd(p, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd))
    assert torch.equal(ref, ours)
    # a state dict written mid-run and loaded into a new optimizer continues the same run
    resumed = _train(lambda p: make_sgd(p, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd),
                     reload_at=10)
    assert torch.equal(ref, resumed)


def test_lean_adam_matches_fused_adam_bit_for_bit():
    ref = _train(lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4, fused=True))
    assert torch.equal(ref, _train(lambda p: make_adam(p, lr=1e-2, weight_decay=1e-4)))
    assert torch.equal(ref, _train(lambda p: make_adam(p, lr=1e-2, weight_decay=1e-4), reload_at=7))


def test_lean_optimizers_are_torch_optimizers():
    p = [nn.Parameter(torch.ones(3))]
    assert isinstance(make_sgd(p, lr=0.1), torch.optim.SGD) and isinstance(make_sgd(p, lr=0.1), LeanSGD)
    assert isinstance(make_adam(p), torch.optim.Adam) and isinstance(make_adam(p), LeanAdam)
    # the step records no autograd history, as torch's guard ensures
    opt = make_sgd(p, lr=0.1, momentum=0.9)
    p[0].grad = torch.ones(3)
    opt.step()
    assert p[0].grad_fn is None and torch.allclose(p[0].detach(), torch.full((3,), 0.9))


def test_training_does_not_import_the_compiler():
    """torch.optim's guards import torch._dynamo (about 1 s) on first use; a fit through the Trainer must not."""
    code = (
        "import sys, torch\n"
        "from commonspace import MultimodalDataset, create\n"
        "from commonspace.train import TrainConfig, Trainer\n"
        "g = torch.Generator().manual_seed(0)\n"
        "data = MultimodalDataset({'a': torch.randn(64, 5, generator=g), 'b': torch.randn(64, 3, generator=g)},"
        " splits={'train': torch.arange(64)})\n"
        "for name in ('bidnn', 'ae_split'):\n"
        "    m = create(name, {'a': 5, 'b': 3}, hidden=8, central=4)\n"
        "    Trainer(m, TrainConfig.for_model(m, epochs=2, progress=False)).fit(data, train='train', val=None)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


def test_tied_transposed_equals_linear_of_the_transpose():
    torch.manual_seed(0)
    lin = TiedLinear(6, 4)
    with torch.no_grad():
        lin.bias_t.normal_()
    y = torch.randn(9, 4, requires_grad=True)
    out = lin.transposed(y)
    out.pow(2).sum().backward()
    grads = (lin.weight.grad.clone(), lin.bias_t.grad.clone(), y.grad.clone())
    lin.zero_grad()
    y2 = y.detach().clone().requires_grad_(True)
    ref = F.linear(y2, lin.weight.t(), lin.bias_t)
    ref.pow(2).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, (lin.weight.grad, lin.bias_t.grad, y2.grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # batched input (more than one leading dimension) takes the matmul path
    y3 = torch.randn(2, 5, 4)
    torch.testing.assert_close(lin.transposed(y3), F.linear(y3, lin.weight.t(), lin.bias_t))


# ------------------------------------------------------------------------------- compile=True
def _tiny_fit(monkeypatch, fake_compile, caplog):
    from commonspace import MultimodalDataset, create
    from commonspace.train import TrainConfig, Trainer

    monkeypatch.setattr(torch, "compile", fake_compile)
    g = torch.Generator().manual_seed(0)
    data = MultimodalDataset({"a": torch.randn(40, 5, generator=g), "b": torch.randn(40, 3, generator=g)},
                             splits={"train": torch.arange(40)})
    model = create("bidnn", {"a": 5, "b": 3}, hidden=6, central=4)
    cfg = TrainConfig.for_model(model, epochs=2, batch_size=16, progress=False, compile=True)
    with caplog.at_level("WARNING", logger="commonspace.train"):
        return Trainer(model, cfg).fit(data, train="train", val=None)


def test_compile_falls_back_to_eager_when_the_compiler_fails(monkeypatch, caplog):
    from torch._inductor.exc import InvalidCxxCompiler

    calls = []

    def fake_compile(module):
        def compiled(batch):
            calls.append(1)
            raise InvalidCxxCompiler()
        return compiled

    hist = _tiny_fit(monkeypatch, fake_compile, caplog)
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(h["train"]["total"])) for h in hist)
    assert len(calls) == 1  # tried once, then eager for the rest of the run
    assert sum("torch.compile failed (InvalidCxxCompiler" in r.message for r in caplog.records) == 1


def test_compile_passes_the_models_own_errors_through(monkeypatch, caplog):
    def fake_compile(module):
        def compiled(batch):
            raise KeyError("an error of the model's code")
        return compiled

    with pytest.raises(KeyError, match="model's code"):
        _tiny_fit(monkeypatch, fake_compile, caplog)


def _recording_compile(seen: list[int]):
    """A stand-in for torch.compile that runs the module eagerly and records each batch size it is called with."""
    def fake_compile(module):
        def compiled(batch):
            seen.append(len(batch))
            return module(batch)
        return compiled
    return fake_compile


def test_compile_runs_the_compiled_function(monkeypatch, caplog):
    seen: list[int] = []
    _tiny_fit(monkeypatch, _recording_compile(seen), caplog)
    assert seen == [16, 16, 8] * 2 and not caplog.records


def test_cli_train_compile_flag(tmp_path, monkeypatch):
    import json

    import numpy as np
    from typer.testing import CliRunner

    from commonspace.cli import app

    seen: list[int] = []
    monkeypatch.setattr(torch, "compile", _recording_compile(seen))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_a=rng.normal(size=(60, 5)), x_b=rng.normal(size=(60, 3)),
             labels=rng.integers(0, 3, 60), modalities=np.array(["a", "b"]))
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "d.npz"), "--model", "bidnn", "--out",
                                   str(tmp_path / "run"), "--epochs", "1", "--no-progress", "--compile"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "run/model/config.json").read_text())["meta"]
    assert seen and meta["train_config"]["compile"] is True
