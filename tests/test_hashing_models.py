"""Hashing losses by hand, multi-label relevance, CSQ centres, and the mahash / unihash models: codes in {-1, +1},
training lowers every loss and puts relevant pairs closer in Hamming distance, ablation parameters, masks,
backbones, config rebuild, and a run through the Trainer."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.losses.hashing import (
    csq_targets,
    dpsh_loss,
    dsh_loss,
    hadamard,
    hash_centres,
    hashnet_loss,
    relaxed_hamming,
    relevance,
    sign_codes,
    triplet_ranking_loss,
)
from commonspace.models.base import model_class
from commonspace.models.hashing import ModalAwareHashing, UnimodalHashing, modality_roles
from commonspace.nn.modal_aware import InertKernelWarning
from commonspace.train import TrainConfig, Trainer

MODS = ("img", "txt")
SHAPE = (4, 3, 3)
TINY = {"image_width": 8, "text_widths": [16, 8], "bits": 16}


def tiny_data(n: int = 48, multilabel: bool = False, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Four classes; each modality is a class pattern plus noise (multi-label: the sum of the labels' patterns)."""
    g = torch.Generator().manual_seed(seed)
    if multilabel:
        labels = torch.rand(n, 4, generator=g) < 0.35
        labels[torch.arange(n), torch.arange(n) % 4] = True
        onehot = labels.float()
    else:
        labels = torch.arange(n) % 4
        onehot = torch.nn.functional.one_hot(labels, 4).float()
    p_img = torch.randn(4, *SHAPE, generator=g)
    p_txt = torch.randn(4, 12, generator=g)
    img = torch.einsum("nk,kchw->nchw", onehot, p_img) + 0.3 * torch.randn(n, *SHAPE, generator=g)
    txt = onehot @ p_txt + 0.3 * torch.randn(n, 12, generator=g)
    return {"img": img, "txt": txt}, labels


def batch_of(feats: dict[str, torch.Tensor], labels: torch.Tensor, mask: torch.Tensor | None = None) -> Batch:
    n = labels.shape[0]
    return Batch(dict(feats), torch.ones(n, 2, dtype=torch.bool) if mask is None else mask, MODS, labels)


def train(model: torch.nn.Module, batch: Batch, steps: int = 60, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        out = model.loss(batch)
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        losses.append(float(out["total"].detach()))
    model.eval()
    return losses


def hamming_gap(model: torch.nn.Module, batch: Batch) -> tuple[float, float]:
    """Mean Hamming distance of the binary codes over relevant and over irrelevant pairs."""
    codes = model.hash_codes(batch).float()
    d = relaxed_hamming(codes)
    rel = relevance(batch.labels)
    off = ~torch.eye(len(batch), dtype=torch.bool)
    return float(d[rel & off].mean()), float(d[~rel].mean())


@pytest.fixture(autouse=True)
def one_thread():
    """The nets are tiny: one thread is faster than many and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ losses
def test_relevance_single_and_multi_label() -> None:
    assert torch.equal(relevance(torch.tensor([0, 1, 0])),
                       torch.tensor([[True, False, True], [False, True, False], [True, False, True]]))
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    expected = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(relevance(y), expected)
    with pytest.raises(DataError, match="labels"):
        relevance(None)  # type: ignore[arg-type]


def test_relaxed_hamming_is_hamming_on_binary_codes() -> None:
    a = torch.tensor([[1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, 1.0, -1.0]])
    assert torch.allclose(relaxed_hamming(a), torch.tensor([[0.0, 2.0], [2.0, 0.0]]))
    assert torch.equal(sign_codes(torch.tensor([[-0.2, 0.0, 3.0]])), torch.tensor([[-1, 1, 1]], dtype=torch.int8))


def test_triplet_loss_by_hand() -> None:
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    labels = torch.tensor([0, 0, 1])
    # K = 2, margin 0.5 * 2 = 1 bit; triplets (0,1,2): d01 = 1, d02 = 2 -> max(0, 1 + 1 - 2) = 0;
    # (1,0,2): d10 = 1, d12 = 1 -> 1; mean over both 0.5, / K -> 0.25; over the active one 1 / K = 0.5
    assert torch.isclose(triplet_ranking_loss(b, labels, margin=0.5, average="all"), torch.tensor(0.25))
    assert torch.isclose(triplet_ranking_loss(b, labels, margin=0.5), torch.tensor(0.5))
    # every triplet satisfied: zero (with a graph), not NaN
    far = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]], requires_grad=True)
    out = triplet_ranking_loss(far, labels, margin=0.5)
    out.backward()
    assert float(out.detach()) == 0.0 and torch.equal(far.grad, torch.zeros(3, 2))
    # no valid triplet: zero with a graph
    z = torch.zeros(2, 2, requires_grad=True)
    out = triplet_ranking_loss(z, torch.tensor([0, 0]))
    out.backward()
    assert float(out.detach()) == 0.0


def test_dpsh_dsh_hashnet_by_hand() -> None:
    u = torch.tensor([[1.0, -2.0], [0.5, 1.0]])
    labels = torch.tensor([0, 1])
    theta = float(u[0] @ u[1]) / 2  # = -0.75, dissimilar pair
    lik = torch.nn.functional.softplus(torch.tensor(theta))
    quant = ((u - u.sign()) ** 2).mean()
    out = dpsh_loss(u, labels, eta=0.5)
    assert torch.isclose(out["total"], lik + 0.5 * quant)
    d2 = float(((u[0] - u[1]) ** 2).sum())  # 9.25 > m = 4: no hinge
    out = dsh_loss(u, labels, alpha=0.1)
    reg = (u.abs() - 1).abs().sum(1).mean()
    assert torch.isclose(out["total"], 0.5 * max(4 - d2, 0.0) + 0.1 * reg)
    z = torch.tanh(u)
    ip = 5.0 * float(z[0] @ z[1])  # alpha = 10 / K = 5
    assert torch.isclose(hashnet_loss(z, labels)["total"], torch.nn.functional.softplus(torch.tensor(ip)))


def test_csq_hadamard_centres_are_far_apart() -> None:
    h = hadamard(32)
    assert torch.equal(h @ h.T, 32 * torch.eye(32))
    centres = hash_centres(32, 64)
    d = relaxed_hamming(centres)
    off = ~torch.eye(64, dtype=torch.bool)
    assert bool((d[off] >= 16).all())
    # more classes than 2K, or a K that is no power of 2: random +-1 centres
    assert set(hash_centres(48, 10).unique().tolist()) == {-1.0, 1.0}
    assert hash_centres(8, 20).shape == (20, 8)


def test_csq_multilabel_centre_is_sign_of_sum() -> None:
    labels = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    target, has = csq_targets(labels, 8)
    c = hash_centres(8, 4)
    assert torch.equal(target[0], torch.sign(c[0] + c[1] + c[2]))  # three +-1 terms: no ties
    assert torch.equal(target[1], c[1])
    assert has.tolist() == [True, True, False]
    single, _ = csq_targets(torch.tensor([3, 0]), 8)
    assert torch.equal(single, c[[3, 0]])
    with pytest.raises(DataError, match="num_classes"):
        csq_targets(torch.tensor([20]), 8)


# ------------------------------------------------------------------ models
def test_modality_roles() -> None:
    assert modality_roles({"a": (5,), "b": (3, 2, 2)}) == ("b", "a")
    assert modality_roles({"a": (5,), "b": (3,)}) == ("a", "b")
    assert modality_roles({"a": (5,), "b": (3,)}, text_modality="a") == ("b", "a")
    with pytest.raises(DataError, match="exactly two"):
        modality_roles({"a": (5,)})


@pytest.mark.parametrize("fusion", ["concat", "gmu", "mcb"])
def test_mahash_trains_and_separates(fusion: str) -> None:
    feats, labels = tiny_data()
    batch = batch_of(feats, labels)
    torch.manual_seed(0)
    # the mean over all triplets is the loss that must fall (the active-triplet mean stays of the same size)
    model = ModalAwareHashing({"img": SHAPE, "txt": 12}, fusion=fusion, mcb_dim=128, gmu_width=16,
                              triplet_average="all", **TINY)
    losses = train(model, batch)
    assert losses[-1] < 0.5 * losses[0]
    rel, irr = hamming_gap(model, batch)
    assert rel < irr
    codes = model.hash_codes(batch)
    assert codes.dtype == torch.int8 and codes.shape == (48, 16)
    assert set(codes.unique().tolist()) <= {-1, 1}
    emb = model.embed(batch)
    assert emb.shape == (48, 16) and bool((emb.abs() <= 1).all())
    assert torch.equal(sign_codes(emb), codes)


def test_mahash_multilabel() -> None:
    feats, labels = tiny_data(multilabel=True)
    batch = batch_of(feats, labels)
    torch.manual_seed(0)
    model = ModalAwareHashing({"img": SHAPE, "txt": 12}, triplet_average="all", **TINY)
    losses = train(model, batch)
    assert losses[-1] < 0.6 * losses[0]
    rel, irr = hamming_gap(model, batch)
    assert rel < irr


@pytest.mark.parametrize("method", ["dpsh", "dsh", "hashnet", "dth", "csq", "texthash"])
@pytest.mark.parametrize("multilabel", [False, True])
def test_unihash_methods_train_and_separate(method: str, multilabel: bool) -> None:
    feats, labels = tiny_data(multilabel=multilabel)
    batch = batch_of(feats, labels)
    torch.manual_seed(0)
    model = UnimodalHashing({"img": SHAPE, "txt": 12}, method=method, **TINY)
    assert model.modality == ("txt" if method == "texthash" else "img")
    losses = train(model, batch)
    assert losses[-1] < losses[0]
    rel, irr = hamming_gap(model, batch)
    assert rel < irr
    assert set(model.hash_codes(batch).unique().tolist()) <= {-1, 1}
    assert set(model.encode(batch)) == {model.modality}


def test_hashnet_continuation() -> None:
    feats, labels = tiny_data(n=8)
    model = UnimodalHashing({"img": SHAPE, "txt": 12}, method="hashnet", hashnet_gamma=0.5, **TINY)
    assert model.beta() == 1.0
    train(model, batch_of(feats, labels), steps=6)
    assert int(model.steps) == 6 and model.beta() == pytest.approx(2.0)
    model.loss(batch_of(feats, labels))  # eval mode: no step
    assert int(model.steps) == 6
    assert "steps" in model.state_dict()


def test_ablation_switches_remove_exactly_their_parameters() -> None:
    dims = {"img": SHAPE, "txt": 12}
    names = {}
    for key, kw in {"full": {}, "no_kn": {"use_kn": False}, "no_an": {"use_an": False}}.items():
        names[key] = {n for n, _ in ModalAwareHashing(dims, **TINY, **kw).named_parameters()}
    kn = {n for n in names["full"] if ".kn." in n}
    an = {n for n in names["full"] if ".an." in n}
    assert {n.split(".")[0] for n in kn} == {"ma1", "ma2"} == {n.split(".")[0] for n in an}
    assert names["no_kn"] == names["full"] - kn
    assert names["no_an"] == names["full"] - an


def test_missing_modalities_follow_the_mask() -> None:
    feats, labels = tiny_data(n=8)
    torch.manual_seed(0)
    model = ModalAwareHashing({"img": SHAPE, "txt": 12}, **TINY).eval()
    mask = torch.ones(8, 2, dtype=torch.bool)
    mask[:3, 1] = False
    mask[3:5, 0] = False
    garbage = {"img": feats["img"].clone(), "txt": feats["txt"].clone()}
    garbage["txt"][:3] = 1e6
    garbage["img"][3:5] = float("nan")
    clean = {"img": feats["img"].clone(), "txt": feats["txt"].clone()}
    clean["txt"][:3] = 0
    clean["img"][3:5] = 0
    a = model.embed(batch_of(garbage, labels, mask))
    b = model.embed(batch_of(clean, labels, mask))
    assert torch.isfinite(a).all() and torch.allclose(a, b)
    enc = model.encode(batch_of(feats, labels))
    full = batch_of(feats, labels)
    assert torch.allclose(enc["img"], model.embed(full.only(["img"])))
    assert torch.allclose(enc["txt"], model.embed(full.only(["txt"])))
    out = model.train().loss(batch_of(clean, labels, mask))
    assert torch.isfinite(out["total"])


@pytest.mark.parametrize("backbone,shape", [("smallcnn", (3, 12, 12)), ("smallcnn", (1, 9, 9)),
                                            ("resnet18", (3, 32, 32))])
def test_raw_image_backbones(backbone: str, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    feats = {"img": torch.rand(6, *shape, generator=g), "txt": torch.randn(6, 12, generator=g)}
    batch = batch_of(feats, torch.tensor([0, 1, 2, 0, 1, 2]))
    torch.manual_seed(0)
    model = ModalAwareHashing({"img": shape, "txt": 12}, image_backbone=backbone, image_width=16,
                              text_widths=[16, 8], bits=8)
    f, s = model.intermediate(batch)
    assert f.shape[:2] == (6, 16) and s.shape == (6, 8)
    model.loss(batch)["total"].backward()
    uni = UnimodalHashing({"img": shape, "txt": 12}, method="csq", image_backbone=backbone, image_width=16, bits=8)
    uni.loss(batch)["total"].backward()
    with pytest.raises(DataError, match="raw"):
        ModalAwareHashing({"img": 20, "txt": 12}, image_backbone=backbone)


def test_vector_image_features_as_1x1_maps() -> None:
    model = ModalAwareHashing({"a": 10, "b": 12}, **TINY)
    assert (model.image_modality, model.text_modality) == ("a", "b")
    g = torch.Generator().manual_seed(0)
    batch = Batch({"a": torch.randn(5, 10, generator=g), "b": torch.randn(5, 12, generator=g)},
                  torch.ones(5, 2, dtype=torch.bool), ("a", "b"), torch.tensor([0, 1, 0, 1, 1]))
    assert model.embed(batch).shape == (5, 16)


@pytest.mark.parametrize("name,kw", [("mahash", {"fusion": "mcb", "mcb_dim": 64, "use_an": False}),
                                     ("unihash", {"method": "csq", "num_classes": 4}),
                                     ("unihash", {"method": "hashnet"})])
def test_config_rebuild(name: str, kw: dict) -> None:
    torch.manual_seed(0)
    cls = ModalAwareHashing if name == "mahash" else UnimodalHashing
    model = cls({"img": SHAPE, "txt": 12}, **TINY, **kw)
    config = json.loads(json.dumps(model.config))
    rebuilt = model_class(name)(**config)
    rebuilt.load_state_dict(model.state_dict())
    feats, labels = tiny_data(n=6)
    batch = batch_of(feats, labels)
    model.eval()
    rebuilt.eval()
    assert torch.equal(model.hash_codes(batch), rebuilt.hash_codes(batch))
    assert rebuilt.config == model.config


def test_bad_hyperparameters() -> None:
    dims = {"img": SHAPE, "txt": 12}
    with pytest.raises(DataError, match="fusion"):
        ModalAwareHashing(dims, fusion="sum")
    with pytest.raises(DataError, match="image_backbone"):
        ModalAwareHashing(dims, image_backbone="vgg")
    with pytest.raises(DataError, match="method"):
        UnimodalHashing(dims, method="sdh")
    with pytest.raises(DataError, match="labels"):
        feats, labels = tiny_data(n=4)
        ModalAwareHashing(dims, **TINY).loss(Batch(feats, torch.ones(4, 2, dtype=torch.bool), MODS))


def test_trainer_runs_mahash() -> None:
    feats, labels = tiny_data(n=64)
    data = MultimodalDataset(feats, labels=labels, splits={"train": torch.arange(48), "val": torch.arange(48, 64)})
    torch.manual_seed(0)
    model = ModalAwareHashing(data.dims, **TINY)
    cfg = TrainConfig.for_model(model, epochs=3, progress=False)
    assert cfg.batch_size == 64 and cfg.optimizer == "adam"
    history = Trainer(model, cfg).fit(data)
    assert len(history) == 3
    emb = model.embed_dataset(data, "val")
    assert emb.shape == (16, 16)


def _distinct_query_codes(**hp: object) -> int:
    """Distinct 32-bit codes of 100 query items after two epochs on 200 items of the shipped mfeat-pairs set."""
    from commonspace.data.builtin.mfeat_pairs import build_mfeat_pair_set
    from commonspace.data.dataset import Standardizer

    data = build_mfeat_pair_set(400, seed=0, n_query=100, n_train=200, n_val=50)
    data = Standardizer().fit(data, "train", skip=["image"]).transform(data)
    torch.manual_seed(0)
    model = ModalAwareHashing(data.dims, bits=32, image_backbone="smallcnn", image_width=32, **hp)
    Trainer(model, TrainConfig.for_model(model, seed=0, progress=False, epochs=2)).fit(data, train="train",
                                                                                     resume=False)
    model.eval()
    codes = model.apply_batches(data, model.hash_codes, data.split("query"))
    return int(torch.unique(codes, dim=0).shape[0])


def test_codes_stay_diverse_with_the_quantization_penalty(one_thread: None) -> None:
    """Issue 13: with the quantization penalty on, codes without the batch-normalised head fell onto a few
    vertices (7 distinct codes for 100 queries; 1 on the two-digit set); the default head keeps them apart."""
    assert _distinct_query_codes() >= 90
    assert _distinct_query_codes(head_norm=False) <= 20


def test_kernel_network_inert_on_one_by_one_maps() -> None:
    with pytest.warns(InertKernelWarning, match="cannot act"):
        model = ModalAwareHashing({"a": 10, "b": 12}, **TINY)
    assert model.kn_inert
    with warnings.catch_warnings():
        warnings.simplefilter("error", InertKernelWarning)
        assert not ModalAwareHashing({"a": 10, "b": 12}, use_kn=False, **TINY).kn_inert
        assert not ModalAwareHashing({"img": (1, 28, 56), "txt": 12}, image_backbone="smallcnn", **TINY).kn_inert


def test_stage_sizes_dry_run_changes_nothing() -> None:
    from commonspace.nn.backbones import ImageBackbone

    assert ImageBackbone("maps", (5, 3, 4), 8).stage_sizes() == ((3, 4), (3, 4))
    assert ImageBackbone("maps", (10,), 8).stage_sizes() == ((1, 1), (1, 1))
    cnn = ImageBackbone("smallcnn", (1, 28, 56), 32)
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    assert cnn.training and cnn.stage_sizes() == ((7, 14), (4, 7)) and cnn.training
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())  # BN statistics untouched
    assert ImageBackbone("smallcnn", (1, 16, 30), 32).stage_sizes() == ((4, 8), (2, 4))
