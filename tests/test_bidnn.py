"""BiDNN: tied weights, the paper's equations (Sec. 2.2), mask semantics, translation, training."""

from __future__ import annotations

import pytest
import torch

from commonspace.data.dataset import Batch, DataError
from commonspace.models.base import create, model_class
from commonspace.models.bidnn import BiDNN

DIMS = {"a": 3, "b": 4}


def make_batch(x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor | None = None) -> Batch:
    if mask is None:
        mask = torch.ones(x1.shape[0], 2, dtype=torch.bool)
    return Batch({"a": x1, "b": x2}, mask, ("a", "b"))


def tiny(**kw) -> BiDNN:
    torch.manual_seed(0)
    kw = {"hidden": 5, "central": 2, "dropout": 0.0, **kw}
    model = create("bidnn", DIMS, **kw)
    assert isinstance(model, BiDNN)
    return model


def rand_batch(n: int = 6, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return make_batch(torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g))


def test_defaults_and_train_settings():
    m = create("bidnn", {"a": 100, "b": 100})
    assert (m.config["hidden"], m.config["central"], m.config["dropout"]) == (200, 100, 0.2)
    assert m.config["activation"] == "tanh" and m.config["output_activation"] == "tanh"
    assert m.train_defaults == {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                                "batch_size": 128}
    assert m.requires_complete and m.trainable


def test_exactly_two_modalities():
    with pytest.raises(DataError):
        create("bidnn", {"a": 3})
    with pytest.raises(DataError):
        create("bidnn", {"a": 3, "b": 4, "c": 5})
    with pytest.raises(DataError):
        create("bidnn", DIMS, activation="softplus")


def test_tied_matrices_are_single_parameters():
    m = tiny()
    params = list(m.parameters())
    assert sum(p is m.W2 for p in params) == 1 and sum(p is m.W3 for p in params) == 1
    assert m.W2.shape == (2, 5) and m.W3.shape == (5, 2)
    names = [n for n, _ in m.named_parameters()]
    assert len(names) == len(set(names)) == 14  # 4 input + 2 tied weights + 4 tied biases + 4 output


def test_parameter_count_by_hand():
    d1, d2, h, c = 7, 9, 11, 4
    m = create("bidnn", {"x": d1, "y": d2}, hidden=h, central=c)
    n = sum(p.numel() for p in m.parameters())
    inputs = (d1 * h + h) + (d2 * h + h)  # W1(1), b1(1); W2(1), b2(1)
    tied = c * h + h * c  # W(2), W(3), once each
    biases = c + h + h + c  # b1(2), b1(3), b2(2), b2(3)
    outputs = (h * d2 + d2) + (h * d1 + d1)  # W1(4), b1(4) -> modality 2; W2(4), b2(4) -> modality 1
    assert n == inputs + tied + biases + outputs


def test_forward_equations_by_hand():
    m = tiny()
    with torch.no_grad():  # non-zero biases so a bias mix-up would show
        for p in m.parameters():
            if p.ndim == 1:
                p.uniform_(-0.5, 0.5)
    b = rand_batch()
    x1, x2 = b.features["a"], b.features["b"]
    f = torch.tanh
    h11 = f(x1 @ m.enc1.weight.T + m.enc1.bias)
    h21 = f(x2 @ m.enc2.weight.T + m.enc2.bias)
    h12 = f(h11 @ m.W2.T + m.tied2.bias)  # W(2) h1(1) + b1(2)
    h22 = f(h21 @ m.W3 + m.tied3.bias_t)  # W(3)^T h2(1) + b2(2)
    h13 = f(h12 @ m.W3.T + m.tied3.bias)  # W(3) h1(2) + b1(3)
    h23 = f(h22 @ m.W2 + m.tied2.bias_t)  # W(2)^T h2(2) + b2(3)
    o1 = f(h13 @ m.dec1.weight.T + m.dec1.bias)
    o2 = f(h23 @ m.dec2.weight.T + m.dec2.bias)
    enc = m.encode(b)
    torch.testing.assert_close(enc["a"], h12)
    torch.testing.assert_close(enc["b"], h22)
    torch.testing.assert_close(m.translate(b, "b"), o1)
    torch.testing.assert_close(m.translate(b, "a"), o2)
    out = m.loss(b)
    l12, l21 = torch.mean((o1 - x2) ** 2), torch.mean((o2 - x1) ** 2)
    torch.testing.assert_close(out["a_to_b"], l12)
    torch.testing.assert_close(out["b_to_a"], l21)
    torch.testing.assert_close(out["total"], l12 + l21)
    torch.testing.assert_close(m.embed(b), torch.cat([h12, h22], 1))


def test_linear_output_option():
    m = tiny(output_activation="linear")
    b = rand_batch()
    h13 = torch.tanh(m.encode(b)["a"] @ m.W3.T + m.tied3.bias)
    torch.testing.assert_close(m.translate(b, "b"), h13 @ m.dec1.weight.T + m.dec1.bias)


def test_tied_gradients_come_from_both_paths():
    m = tiny()
    b = rand_batch()
    grads = {}
    for key in ("a_to_b", "b_to_a", "total"):
        m.zero_grad()
        m.loss(b)[key].backward()
        grads[key] = (m.W2.grad.clone(), m.W3.grad.clone())
    for key in ("a_to_b", "b_to_a"):
        assert grads[key][0].abs().sum() > 0 and grads[key][1].abs().sum() > 0
    for i in range(2):
        torch.testing.assert_close(grads["total"][i], grads["a_to_b"][i] + grads["b_to_a"][i])
    # Path 1 only never touches path 2's input layer, and vice versa.
    m.zero_grad()
    m.loss(b)["a_to_b"].backward()
    assert m.enc2.weight.grad is None or m.enc2.weight.grad.abs().sum() == 0


def test_dropout_only_in_training():
    m = tiny(dropout=0.5)
    b = rand_batch(32)
    m.eval()
    assert torch.equal(m.loss(b)["total"], m.loss(b)["total"])
    m.train()
    torch.manual_seed(3)
    l1 = m.loss(b)["total"]
    l2 = m.loss(b)["total"]
    assert not torch.equal(l1, l2)
    # the central representation itself is read before dropout
    assert torch.equal(m.encode(b)["a"], m.encode(b)["a"])


def test_embed_duplicates_present_half_and_ignores_masked_garbage():
    m = tiny()
    m.eval()
    b = rand_batch(4)
    mask = torch.tensor([[True, True], [True, False], [False, True], [False, False]])
    garbage = make_batch(b.features["a"] * 0 + 7.0, b.features["b"] * 0 - 3.0)  # nonzero where masked
    x1 = torch.where(mask[:, :1], b.features["a"], garbage.features["a"])
    x2 = torch.where(mask[:, 1:], b.features["b"], garbage.features["b"])
    e = m.embed(make_batch(x1, x2, mask))
    full = m.encode(b)
    h1, h2 = full["a"], full["b"]
    torch.testing.assert_close(e[0], torch.cat([h1[0], h2[0]]))
    torch.testing.assert_close(e[1], torch.cat([h1[1], h1[1]]))
    torch.testing.assert_close(e[2], torch.cat([h2[2], h2[2]]))
    assert torch.equal(e[3], torch.zeros(4))
    # masked garbage behaves exactly like zeros
    clean = make_batch(x1 * mask[:, :1], x2 * mask[:, 1:], mask)
    torch.testing.assert_close(m.embed(clean), e)
    torch.testing.assert_close(m.translate(clean, "a"), m.translate(make_batch(x1, x2, mask), "a"))


def test_loss_uses_complete_pairs_only():
    m = tiny()
    b = rand_batch(6)
    mask = torch.ones(6, 2, dtype=torch.bool)
    mask[4:, 1] = False
    partial = make_batch(b.features["a"], b.features["b"], mask)
    first = make_batch(b.features["a"][:4], b.features["b"][:4])
    torch.testing.assert_close(m.loss(partial)["total"], m.loss(first)["total"])


def test_translate_and_expand():
    torch.manual_seed(0)
    m = create("bidnn", {"img": (2, 3, 3), "txt": 5}, hidden=8, central=3)
    m.eval()
    n = 5
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0], [1, 1]], dtype=torch.bool)
    feats = {"img": torch.randn(n, 2, 3, 3) * mask[:, 0, None, None, None],
             "txt": torch.randn(n, 5) * mask[:, 1:]}
    b = Batch(feats, mask, ("img", "txt"))
    t_txt, t_img = m.translate(b, "txt"), m.translate(b, "img")
    assert t_txt.shape == (n, 5) and t_img.shape == (n, 2, 3, 3)
    assert t_txt.abs().max() <= 1  # tanh output (reference code)
    assert torch.equal(t_txt[2], torch.zeros(5))  # no source -> zeros
    ex = m.expand(b)
    assert ex.mask.tolist() == [[True, True]] * 3 + [[False, False]] + [[True, True]]
    torch.testing.assert_close(ex.features["txt"][1], t_txt[1])
    torch.testing.assert_close(ex.features["img"][2], t_img[2])
    torch.testing.assert_close(ex.features["txt"][0], feats["txt"][0])  # present ones are kept
    torch.testing.assert_close(ex.features["img"][4], feats["img"][4])
    assert torch.equal(ex.features["txt"][3], torch.zeros(5))
    with pytest.raises(DataError):
        m.translate(b, "audio")


def test_config_rebuild():
    m = create("bidnn", DIMS, hidden=6, central=3, dropout=0.1, output_activation="linear")
    clone = model_class("bidnn")(**m.config)
    assert clone.config == m.config
    sd, sd2 = m.state_dict(), clone.state_dict()
    assert list(sd) == list(sd2) and all(sd[k].shape == sd2[k].shape for k in sd)
    clone.load_state_dict(sd)
    b = rand_batch()
    torch.testing.assert_close(clone.embed(b), m.embed(b))
    import json
    json.dumps(m.config)


def test_training_reduces_loss():
    torch.manual_seed(0)
    n, k = 512, 4
    z = torch.randn(n, k)
    x1 = torch.tanh(z @ torch.randn(k, 12) * 0.5) + 0.05 * torch.randn(n, 12)
    x2 = torch.tanh(z @ torch.randn(k, 10) * 0.5) + 0.05 * torch.randn(n, 10)
    data = make_batch(x1, x2)
    m = create("bidnn", {"a": 12, "b": 10}, hidden=32, central=8)
    d = m.train_defaults
    opt = torch.optim.SGD(m.parameters(), lr=d["lr"], momentum=d["momentum"], nesterov=d["nesterov"])
    m.eval()
    with torch.no_grad():
        before = m.loss(data)["total"].item()
    m.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(n, (d["batch_size"],), generator=g)
        loss = m.loss(make_batch(x1[idx], x2[idx]))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        after = m.loss(data)["total"].item()
    assert after < 0.5 * before, (before, after)
