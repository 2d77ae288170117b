"""Replicated-softmax RBM (Salakhutdinov & Hinton 2009) and its use as the MDBN's count-data bottom layer."""

from __future__ import annotations

import itertools

import pytest
import torch

from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.models import create
from commonspace.nn.rbm import RBM, MultimodalRBM

torch.set_default_dtype(torch.float32)


def _rsm(n_visible: int = 5, n_hidden: int = 4, seed: int = 0, scale: float = 0.5) -> RBM:
    """An RSM in float64 with non-zero biases and sizeable weights, so a mixed-up term would show."""
    rbm = RBM(n_visible, n_hidden, visible="softmax").double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in rbm.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return rbm


def _all_states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


def _energy(v: torch.Tensor, h: torch.Tensor, rbm: RBM) -> torch.Tensor:
    """``E(v, h) = -a.v - D b.h - h.W v`` for every (v row, h row) pair, (B, S), with ``D = sum(v)``."""
    d = v.sum(1, keepdim=True)
    return -(v @ rbm.v_bias)[:, None] - d * (h @ rbm.h_bias)[None, :] - v @ rbm.weight.T @ h.T


def _counts(seed: int = 1, n: int = 6, k: int = 5) -> torch.Tensor:
    """Real-valued counts with different lengths (proportions times pseudo lengths), one integer row."""
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(n, k, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 7.0, 2.0, 4.0])[:n, None]
    v[0] = torch.tensor([2.0, 0.0, 1.0, 0.0, 3.0], dtype=torch.float64)[:k]
    return v


def test_free_energy_and_hidden_posterior_by_enumerating_hidden_states():
    rbm = _rsm()
    v, h = _counts(), _all_states(4)
    with torch.no_grad():
        e = _energy(v, h, rbm)
        torch.testing.assert_close(rbm.free_energy(v), -torch.logsumexp(-e, dim=1))
        torch.testing.assert_close(rbm.hidden_prob(v), torch.softmax(-e, dim=1) @ h)
        # the hidden biases are scaled by the document length, not added once
        d = v.sum(1, keepdim=True)
        torch.testing.assert_close(rbm.hidden_prob(v), torch.sigmoid(v @ rbm.weight.T + d * rbm.h_bias))


def test_visible_mean_is_length_times_softmax_and_matches_word_sequence_enumeration():
    rbm = _rsm(3, 2, seed=2)
    h = _all_states(2)
    with torch.no_grad():
        probs = torch.softmax(h @ rbm.weight + rbm.v_bias, dim=1)
        torch.testing.assert_close(rbm.visible_mean(h), probs)  # no length: the word distribution
        length = torch.tensor([2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
        torch.testing.assert_close(rbm.visible_mean(h, length), 2.0 * probs)
        # brute force: p(V | h) over every ordered sequence of D = 2 words, E(V, h) = -sum_i (a + W^T h)_{w_i}
        seqs = list(itertools.product(range(3), repeat=2))
        counts = torch.zeros(len(seqs), 3, dtype=torch.float64)
        for i, s in enumerate(seqs):
            for w in s:
                counts[i, w] += 1
        p = torch.softmax(-_energy(counts, h, rbm).T, dim=1)  # (hidden states, sequences)
        torch.testing.assert_close(rbm.visible_mean(h, length), p @ counts)


def test_sampling_keeps_each_documents_length_and_has_the_right_mean():
    rbm = _rsm(4, 3, seed=3)
    h = torch.bernoulli(torch.full((3, 3), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    length = torch.tensor([5.0, 2.6, 0.0], dtype=torch.float64)
    torch.manual_seed(0)
    s = rbm.sample_visible(h, length)
    torch.testing.assert_close(s.sum(1), length)
    assert torch.equal(s[0], s[0].round()) and bool((s >= 0).all())  # integer D: integer word counts
    assert torch.equal(s[2], torch.zeros(4, dtype=torch.float64))  # an empty document stays empty
    # round(2.6) = 3 words rescaled to 2.6: multiples of 2.6 / 3
    torch.testing.assert_close(s[1] / (2.6 / 3), (s[1] / (2.6 / 3)).round())
    torch.manual_seed(1)
    many = rbm.sample_visible(h[:1].expand(20000, -1), length[:1].expand(20000))
    torch.testing.assert_close(many.mean(0), rbm.visible_mean(h[:1], length[:1])[0], atol=0.05, rtol=0.0)


def test_gibbs_chain_keeps_document_lengths():
    rbm = _rsm()
    v = _counts()
    torch.manual_seed(0)
    out = rbm.gibbs(v, k=3)
    torch.testing.assert_close(out.sum(1), v.sum(1))


@pytest.mark.parametrize("k", [1, 2])
def test_cd_loss_gradient_is_the_textbook_update(k):
    rbm = _rsm(5, 4, seed=4)
    v = _counts(seed=5)
    torch.manual_seed(6)
    loss, neg = rbm.cd_loss(v, k=k)
    assert not neg.requires_grad
    loss.backward()
    with torch.no_grad():
        hd, hn = rbm.hidden_prob(v), rbm.hidden_prob(neg)
        dd, dn = v.sum(1, keepdim=True), neg.sum(1, keepdim=True)
        n = v.shape[0]
        expected = {"weight": (hd.T @ v - hn.T @ neg) / n, "v_bias": v.mean(0) - neg.mean(0),
                    "h_bias": (dd * hd).mean(0) - (dn * hn).mean(0)}
    for name, p in rbm.named_parameters():
        torch.testing.assert_close(-p.grad, expected[name])
    torch.manual_seed(6)
    torch.testing.assert_close(neg, rbm.gibbs(v, k))


def _topic_corpus(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two topics over 12 words (each puts 90% of its mass on its own half); lengths 10 to 60 words."""
    g = torch.Generator().manual_seed(seed)
    topics = torch.full((2, 12), 0.1 / 6)
    topics[0, :6], topics[1, 6:] = 0.9 / 6, 0.9 / 6
    label = torch.randint(0, 2, (n,), generator=g)
    lengths = torch.randint(10, 61, (n,), generator=g)
    docs = torch.stack([torch.bincount(torch.multinomial(topics[c], int(m), replacement=True, generator=g),
                                       minlength=12).float() for c, m in zip(label, lengths, strict=True)])
    return docs, label


def _recon_cross_entropy(rbm: RBM, docs: torch.Tensor) -> float:
    """Mean per-word cross-entropy of the documents under the word distribution of their mean-field code."""
    with torch.no_grad():
        probs = rbm.visible_mean(rbm.hidden_prob(docs))
        return float(-(docs * probs.log()).sum() / docs.sum())


@pytest.mark.usefixtures("one_thread")
def test_rsm_learns_a_two_topic_corpus():
    _learn_two_topics()


def _learn_two_topics() -> None:
    torch.manual_seed(0)
    docs, label = _topic_corpus(400, seed=0)
    test_docs, test_label = _topic_corpus(200, seed=1)
    rbm = RBM(12, 2, visible="softmax")
    before = _recon_cross_entropy(rbm, test_docs)
    opt = torch.optim.SGD(rbm.parameters(), lr=0.002, momentum=0.9)
    for _ in range(30):
        for i in range(0, 400, 50):
            opt.zero_grad()
            rbm.cd_loss(docs[i:i + 50], k=1)[0].backward()
            opt.step()
    after = _recon_cross_entropy(rbm, test_docs)
    # uniform words give log 12 = 2.48 nats; knowing the topic, 2.12 nats (its entropy) is the floor
    assert before == pytest.approx(torch.log(torch.tensor(12.0)).item(), abs=0.01)
    assert after < 2.2
    # the hidden code separates the two topics on held-out documents of any length: one unit is enough
    with torch.no_grad():
        code = rbm.hidden_prob(test_docs)
    best = max(float(((code[:, j] > 0.5).long() == test_label).float().mean()) for j in range(2))
    best = max(best, 1.0 - min(float(((code[:, j] > 0.5).long() == test_label).float().mean()) for j in range(2)))
    assert best > 0.95


# ------------------------------------------------------------------------------------- MDBN
def _pair_data(n: int = 40, negative: bool = False) -> MultimodalDataset:
    g = torch.Generator().manual_seed(0)
    text = torch.rand(n, 6, generator=g)
    text = text / text.sum(1, keepdim=True)
    if negative:
        text = text - 0.5
    return MultimodalDataset({"image": torch.randn(n, 5, generator=g), "text": text},
                             splits={"train": torch.arange(n)})


def test_mdbn_softmax_text_layer_and_doc_length():
    dims = {"image": 5, "text": 6}
    model = create("mdbn", dims, layers_x=[4], layers_y=[3], shared=4, visible=("gaussian", "softmax"),
                   doc_length=50)
    assert model.stack_y[0].visible == "softmax" and model.stack_x[0].visible == "gaussian"
    assert model.top.visible == ("bernoulli", "bernoulli")
    data = _pair_data()
    model.check_data(data)
    batch = data.batch(torch.arange(8)).only(["image", "text"])
    _, y, _, _ = model._inputs(batch)
    torch.testing.assert_close(y.sum(1), torch.full((8,), 50.0))
    # an absent text row stays zero (no division by its zero length) and adds nothing to the code
    one = batch.only(["image"])
    _, y1, _, _ = model._inputs(one)
    assert torch.equal(y1, torch.zeros_like(y1))
    assert torch.isfinite(model.embed_with(one, 0)).all()
    # counts as given: doc_length=None leaves the rows alone
    raw = create("mdbn", dims, layers_x=[4], layers_y=[3], shared=4, visible=("gaussian", "softmax"))
    torch.testing.assert_close(raw._inputs(batch)[1], batch.features["text"])
    loss = model.loss(batch)  # no stage set: the joint stage's loss
    assert torch.isfinite(loss["total"])
    model.set_stage("pretrain_text_1")
    assert torch.isfinite(model.loss(batch)["cd"])


def test_mdbn_softmax_rejects_negative_features_and_empty_stacks():
    dims = {"image": 5, "text": 6}
    model = create("mdbn", dims, layers_x=[4], layers_y=[3], shared=4, visible=("gaussian", "softmax"))
    with pytest.raises(DataError, match="'text'.*replicated softmax.*do not standardise"):
        model.check_data(_pair_data(negative=True))
    with pytest.raises(DataError, match="'text'.*no layers"):
        create("mdbn", dims, layers_x=[4], layers_y=[], shared=4, visible=("gaussian", "softmax"))
    with pytest.raises(DataError, match="doc_length"):
        create("mdbn", dims, layers_x=[4], layers_y=[3], visible=("gaussian", "softmax"), doc_length=0)
    with pytest.raises(DataError, match="visible"):
        create("mdbn", dims, visible=("gaussian", "poisson"))
    with pytest.raises(ValueError, match="replicated-softmax group needs its own RBM"):
        MultimodalRBM(3, 2, 4, visible=("softmax", "bernoulli"))
    # the MRBM's groups are the top MRBM's: no softmax there either
    with pytest.raises(DataError, match="visible"):
        create("mrbm", dims, visible=("gaussian", "softmax"))


def test_mdbn_stage_learning_rates():
    dims = {"image": 5, "text": 6}
    model = create("mdbn", dims, layers_x=[4, 3], layers_y=[3, 2], shared=4, pretrain_lr=(0.01, [1e-4, None]),
                   joint_lr=0.003)
    assert [(s.name, s.lr) for s in model.stages()] == [
        ("pretrain_image_1", 0.01), ("pretrain_image_2", 0.01), ("pretrain_text_1", 1e-4), ("pretrain_text_2", None),
        ("joint", 0.003)]
    # the stored config rebuilds the same stages (checkpoints re-create models from it)
    again = create("mdbn", dims, **{k: v for k, v in model.config.items() if k != "dims"})
    assert [s.lr for s in again.stages()] == [s.lr for s in model.stages()]
    plain = create("mdbn", dims, layers_x=[4], layers_y=[3], shared=4)
    assert all(s.lr is None for s in plain.stages())
    assert [s.lr for s in create("mdbn", dims, layers_x=[4], layers_y=[3], pretrain_lr=0.02).stages()] == [
        0.02, 0.02, None]
    assert [s.lr for s in create("mdbn", dims, layers_x=[4], layers_y=[3], pretrain_lr=(None, 0.5)).stages()] == [
        None, 0.5, None]
    for bad in ({"pretrain_lr": (0.1, 0.2, 0.3)}, {"pretrain_lr": -1.0}, {"pretrain_lr": (0.1, [0.1, 0.2])},
                {"pretrain_lr": (True, None)}, {"joint_lr": (0.1, 0.2)}, {"joint_lr": 0}):
        with pytest.raises(DataError, match="lr"):
            create("mdbn", dims, layers_x=[4], layers_y=[3], **bad)


def test_rsm_pcd_chains_keep_the_lengths_of_their_seed_rows():
    rbm = RBM(6, 3, visible="softmax", n_chains=4)
    data = _pair_data().features["text"][:3] * 20.0
    torch.manual_seed(0)
    rbm.pcd_loss(data, k=1)
    # the chains were seeded from the data rows (cycled) and keep their lengths
    torch.testing.assert_close(rbm.chains.sum(1), data[torch.arange(4) % 3].sum(1))
    rbm.pcd_loss(data[:2] * 3.0, k=1)  # other batches do not change the chains' lengths
    torch.testing.assert_close(rbm.chains.sum(1), data[torch.arange(4) % 3].sum(1))


def test_mdbn_with_rsm_round_trips_through_save_and_load(tmp_path):
    from commonspace.train.checkpoint import load_model, save_model

    torch.manual_seed(0)
    model = create("mdbn", {"image": 5, "text": 6}, layers_x=[4], layers_y=[3, 2], shared=4,
                   visible=("gaussian", "softmax"), doc_length=40, pretrain_lr=(None, [1e-3, None]), joint_lr=0.003)
    batch = _pair_data().batch(torch.arange(8))
    save_model(tmp_path / "m", model)
    loaded = load_model(tmp_path / "m").model
    assert loaded.stack_y[0].visible == "softmax" and loaded.config["doc_length"] == 40.0
    assert [s.lr for s in loaded.stages()] == [s.lr for s in model.stages()]
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(batch), model.embed(batch))
