"""MDBN pathway balance: the joint code must classify at least as well as the better modality alone.

The synthetic set mimics Wikipedia's failure: the "image" is high-dimensional Gaussian data whose variance is
dominated by class-free low-rank structure (large covariance eigenvalues: a Gaussian RBM on it learns fast) and
carries a weak, complementary class signal; the "text" is 10 topic proportions (rows sum to 1) that carry most
of the class information but, standardised, have covariance eigenvalues near 1, so a Gaussian RBM with unit
variance barely learns them and the joint code ends up the image's.
"""

from __future__ import annotations

import logging

import pytest
import torch

from commonspace.data.dataset import MultimodalDataset, Standardizer
from commonspace.eval.probe import logistic_probe
from commonspace.models import create
from commonspace.train import TrainConfig, Trainer

#: the settings recommended for the MDBN on image features + topic proportions (benchmarks/mdbn_balance.py)
BALANCED = {"visible": ("gaussian", "softmax"), "doc_length": 300, "pretrain_lr": (None, 0.01 / 300),
            "joint_lr": 0.003}


def _two_modalities(n: int = 1000, n_train: int = 600, seed: int = 0) -> MultimodalDataset:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    alpha = torch.full((n, 10), 0.5)
    alpha[torch.arange(n), 2 * y] += 1.0
    alpha[torch.arange(n), 2 * y + 1] += 1.0
    text = torch.distributions.Dirichlet(alpha).sample()
    loadings = torch.randn(48, 4, generator=g) * 2.0  # class-free structure, 4 large eigenvalues
    means = torch.randn(2, 48, generator=g)  # the image only tells y mod 2: complementary to the text
    image = torch.randn(n, 4, generator=g) @ loadings.T + means[y % 2] + torch.randn(n, 48, generator=g)
    return MultimodalDataset({"image": image, "text": text}, labels=y,
                             splits={"train": torch.arange(n_train), "test": torch.arange(n_train, n)})


def _probe_accuracy(data: MultimodalDataset, epochs: int = 15, **hparams) -> dict[str, float]:
    torch.manual_seed(0)
    model = create("mdbn", data.dims, layers_x=[32], layers_y=[32], shared=32, **hparams)
    cfg = TrainConfig.for_model(model, seed=0, progress=False, epochs=epochs, batch_size=64)
    logging.disable(logging.WARNING)
    try:
        Trainer(model, cfg).fit(data, train="train", val=None, resume=False)
    finally:
        logging.disable(logging.NOTSET)
    tr, te = data.split("train"), data.split("test")
    trb, teb = data.batch(tr), data.batch(te)
    ytr, yte = data.labels[tr].numpy(), data.labels[te].numpy()
    out = {}
    with torch.no_grad():
        model.eval()
        for c in ("both", "image", "text"):
            a, b = (trb, teb) if c == "both" else (trb.only([c]), teb.only([c]))
            out[c] = logistic_probe(model.embed(a).numpy(), ytr, model.embed(b).numpy(), yte, seed=0)["accuracy"]
    return out


@pytest.mark.usefixtures("one_thread")
def test_balanced_mdbn_joint_code_beats_each_modality_and_the_unbalanced_one_does_not():
    _check_balance()


def _check_balance() -> None:
    raw = _two_modalities()
    # recommended: image Gaussian on standardised features, text through a replicated softmax on raw proportions
    balanced = _probe_accuracy(Standardizer().fit(raw.select(["image"]), "train").transform(raw), **BALANCED)
    assert balanced["both"] >= max(balanced["image"], balanced["text"]), balanced
    assert balanced["text"] > 0.6 and balanced["image"] > 0.35  # both pathways carry their modality's signal
    # the old bench setting: both Gaussian on standardised features; the text is lost in the joint code
    unbalanced = _probe_accuracy(Standardizer().fit(raw, "train").transform(raw))
    assert unbalanced["both"] < unbalanced["text"] - 0.15, unbalanced
    assert balanced["both"] > unbalanced["both"] + 0.2
