"""CVS / M-CVS / RVS: block counts, staging and the freezing guarantee, masks, training, config, class stages."""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.eval.retrieval import cross_modal_retrieval
from commonspace.models.base import model_class
from commonspace.models.cvs import CVS, MCVS, RVS
from commonspace.train import TrainConfig, Trainer
from commonspace.train.stagewise import class_stages, train_stagewise

DIMS = {"a": 10, "b": 8, "c": 6}
K = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: extra threads only contend (tens of times slower on a busy host)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def synth(n: int = 240, seed: int = 0, dims: dict[str, int] = DIMS, k: int = K) -> MultimodalDataset:
    """Class prototypes per modality plus noise: labelled, paired, 3/4 train and 1/4 test."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % k
    feats = {m: (g.normal(size=(k, d))[y] * 1.5 + g.normal(size=(n, d))).astype(np.float32) for m, d in dims.items()}
    idx = g.permutation(n)
    return MultimodalDataset(feats, labels=y, splits={"train": idx[: n * 3 // 4], "test": idx[n * 3 // 4:]})


def small(cls: type[CVS] = CVS, dims: dict[str, int] = DIMS, **kw) -> CVS:
    torch.manual_seed(0)
    return cls(dims, **{"n_classes": K, "dim": 16, "hidden": (32,), **kw})


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 32, "progress": False, **kw})


def mean_map(model: CVS, data: MultimodalDataset) -> float:
    ti = data.split("test")
    res = cross_modal_retrieval(model.encode_dataset(data, ti), data.labels[ti], data.mask[ti], list(data.modalities))
    return float(np.mean([r["map"] for r in res.values()]))


# ------------------------------------------------------------------------------------------ structure
def test_defaults_follow_the_thesis() -> None:
    m = CVS(DIMS, n_classes=K)
    c = m.config
    assert (c["dim"], c["hidden"], c["activation"]) == (512, [512, 512], "relu")
    assert c["margins"] == [1.0, 1.0, 1.0] and c["gammas"] == [0.25, 0.25, 0.5]
    assert (c["alpha"], c["beta"], c["attention"], c["multilabel"]) == (1.0, 1.0, True, False)
    assert [lin.out_features for lin in m.heads["a"] if isinstance(lin, torch.nn.Linear)] == [512, 512, 512]
    assert CVS.train_defaults == {"optimizer": "adam", "lr": 1e-3, "batch_size": 128}
    assert m.classifier.in_features == 512 and m.classifier.out_features == K


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_cvs_has_n_choose_2_blocks(n: int) -> None:
    dims = {f"m{i}": 3 for i in range(n)}
    assert small(dims=dims).n_attention_blocks == comb(n, 2)
    assert small(dims=dims, attention=False).n_attention_blocks == 0


def test_mcvs_adds_n_blocks_per_stage() -> None:
    dims = {m: 3 for m in "abcde"}
    m = small(MCVS, dims)
    assert m.stage_groups == [["a", "b"], ["c"], ["d"], ["e"]]  # thesis: image + text, then one per stage
    assert m.blocks_per_stage == [1, 2, 3, 4] and m.n_attention_blocks == comb(5, 2)
    m = small(MCVS, dims, stage_order=[["a", "b", "c"], ["d", "e"]])
    assert m.blocks_per_stage == [3, 3 + 4]


@pytest.mark.parametrize("ref", ["a", "c"])
def test_rvs_has_one_block_per_non_reference_modality(ref: str) -> None:
    dims = {m: 3 for m in "abcde"}
    m = small(RVS, dims, reference=ref)
    assert m.n_attention_blocks == 4 and m.blocks_per_stage == [1, 1, 1, 1]
    assert all(k.startswith(f"{ref}|") for k in m.blocks)
    assert m.stage_groups[0][0] == ref
    with pytest.raises(DataError):
        small(RVS, dims, reference="b", stage_order=[["a", "c"], ["b"], ["d"], ["e"]])


def test_model_level_ablation_removes_the_matrices() -> None:
    full = small()
    n_full = sum(p.numel() for p in full.parameters())
    for flag, suffix in (("use_wi", ".w_i"), ("use_ws", ".w_s"), ("use_wis", ".w_is")):
        m = small(**{flag: False})
        names = [n for n, _ in m.named_parameters()]
        assert not any(n.endswith(suffix) for n in names)
        assert sum(n.endswith(suffix) for n, _ in full.named_parameters()) == 3
        assert sum(p.numel() for p in m.parameters()) == n_full - 3 * 16 * 16


@pytest.mark.parametrize("cls", [MCVS, RVS])
def test_stages_train_only_their_own_parameters(cls: type[CVS]) -> None:
    m = small(cls)
    stages = m.stages()
    assert [s.name for s in stages] == ["stage1", "stage2"]
    ids = [{id(p) for p in s.parameters} for s in stages]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {id(p) for p in m.parameters()}
    named = dict(m.named_parameters())
    second = {n for n, p in named.items() if id(p) in ids[1]}
    assert all(n.startswith(("heads.c.", "blocks.a|c.", "blocks.b|c.")) for n in second)
    assert id(m.classifier.weight) in ids[0]


# ------------------------------------------------------------------------------ freezing guarantee
@pytest.mark.parametrize("cls,kw", [(MCVS, {}), (RVS, {}), (RVS, {"reference": "b"})])
def test_staged_training_leaves_earlier_modalities_bit_for_bit_unchanged(cls: type[CVS], kw: dict) -> None:
    data = synth()
    m = small(cls, **kw)
    batch = data.batch(torch.arange(48))  # every modality present, so the new blocks do see the old ones
    snap: dict[str, torch.Tensor] = {}

    def after_epoch(trainer: Trainer, record: dict) -> None:
        if record["stage"] == "stage1":
            with torch.no_grad():
                snap.update(m.encode(batch))

    Trainer(m, cfg(epochs=2), callbacks=[after_epoch]).fit(data)
    with torch.no_grad():
        out = m.encode(batch)
    first = m.stage_groups[0]
    for mod in first:
        assert torch.equal(out[mod], snap[mod]), mod
    new = m.stage_groups[1][0]
    assert not torch.equal(out[new], snap[new])  # the new stage did train


def test_add_modality_trains_only_the_new_parameters() -> None:
    data = synth()
    m = small(MCVS, {"a": 10, "b": 8})
    Trainer(m, cfg()).fit(data.select(["a", "b"]))
    batch = data.batch(torch.arange(48))
    with torch.no_grad():
        before = m.encode(batch)
    new = m.add_modality("c", 6)
    assert m.n_attention_blocks == 3 and m.blocks_per_stage == [1, 2]
    named = {id(p): n for n, p in m.named_parameters()}
    assert sorted(named[id(p)] for p in new) == sorted(n for n in named.values()
                                                       if n.startswith(("heads.c.", "blocks.a|c.", "blocks.b|c.")))
    assert [s.name for s in m.stages()] == ["stage2"]  # the trained stage is not retrained
    assert {id(p) for p in m.stages()[0].parameters} == {id(p) for p in new}
    assert m.config["stage_order"] == [["a", "b"], ["c"]] and m.config["dims"]["c"] == [6]
    Trainer(m, cfg()).fit(data)
    with torch.no_grad():
        after = m.encode(batch)
    assert torch.equal(after["a"], before["a"]) and torch.equal(after["b"], before["b"])
    # the config rebuilds the grown model
    twin = model_class("mcvs")(**json.loads(json.dumps(m.config)))
    twin.load_state_dict(m.state_dict())
    with torch.no_grad():
        rebuilt = twin.encode(batch)
    assert all(torch.equal(rebuilt[k], after[k]) for k in after)


# ---------------------------------------------------------------------------------- missing modalities
def _masked_batch(data: MultimodalDataset, n: int = 32, garbage: float = 0.0) -> Batch:
    b = data.batch(torch.arange(n))
    mask = b.mask.clone()
    mask[: n // 2, 2] = False  # c missing for half
    mask[n // 2: n // 2 + 4, 1] = False  # b missing for a few
    mask[n - 3:, 0] = False  # a missing for the last three
    feats = {m: torch.where(mask[:, j:j + 1], x, torch.full_like(x, garbage)) for j, (m, x) in
             enumerate(b.features.items())}
    return Batch(feats, mask, b.modalities, b.labels, b.index)


@pytest.mark.parametrize("cls", [CVS, MCVS, RVS])
def test_missing_modalities_do_not_contribute(cls: type[CVS]) -> None:
    data = synth()
    m = small(cls)
    zeros, junk = _masked_batch(data), _masked_batch(data, garbage=1e3)
    out0, out1 = m.loss(zeros), m.loss(junk)
    assert torch.isfinite(out0["total"])
    assert torch.equal(out0["total"], out1["total"])
    e0, e1 = m.encode(zeros), m.encode(junk)
    for j, mod in enumerate(m.modalities):
        keep = zeros.mask[:, j]
        assert torch.equal(e0[mod][keep], e1[mod][keep])


def test_sample_without_partner_skips_attention() -> None:
    data = synth()
    m = small()
    b = _masked_batch(data)
    b.mask[: 4, 1:] = False  # the first four rows have only modality a
    alone = b.mask[:, 0] & ~b.mask[:, 1:].any(1)
    assert alone.sum() >= 4
    with torch.no_grad():
        direct = F.normalize(m.heads["a"](b.features["a"]), dim=1)
        assert torch.equal(m.encode(b)["a"][alone], direct[alone])


def test_absent_modality_gets_no_gradient() -> None:
    data = synth()
    m = small()
    b = data.batch(torch.arange(32)).only(["a", "b"])
    m.loss(b)["total"].backward()
    assert all(p.grad is None or not p.grad.any() for p in m.heads["c"].parameters())
    assert any(p.grad is not None and p.grad.any() for p in m.heads["a"].parameters())


def test_embed_is_the_renormalised_mean_of_present_vectors() -> None:
    data = synth()
    m = small()
    b = _masked_batch(data)
    with torch.no_grad():
        f, e = m.encode(b), m.embed(b)
    w = b.mask.float()
    mean = sum(f[mod] * w[:, j:j + 1] for j, mod in enumerate(m.modalities)) / w.sum(1, keepdim=True)
    torch.testing.assert_close(e, F.normalize(mean, dim=1))
    rows = b.mask[:, 0]
    torch.testing.assert_close(f["a"][rows].norm(dim=1), torch.ones(int(rows.sum())))


# ---------------------------------------------------------------------------------- losses and errors
def test_loss_errors_are_clear() -> None:
    data = synth()
    b = data.batch(torch.arange(16))
    with pytest.raises(DataError, match="labels"):
        small().loss(Batch(b.features, b.mask, b.modalities, None))
    with pytest.raises(DataError, match="n_classes"):
        small(n_classes=None).loss(b)
    out = small(n_classes=None, alpha=0.0).loss(b)  # triplet-only training needs no classifier
    assert torch.isfinite(out["total"]) and float(out["classification"]) == 0.0
    with pytest.raises(DataError, match="multilabel"):
        small(multilabel=True).loss(b)
    with pytest.raises(DataError, match="n_classes"):
        small(n_classes=2).check_data(data)


def test_multilabel_uses_sigmoid_bce() -> None:
    data = synth()
    y = F.one_hot(data.labels, K).bool()
    y[::3, 0] = True
    ml = MultimodalDataset(data.features, labels=y, splits=data.splits)
    m = small(multilabel=True)
    m.check_data(ml)
    out = m.loss(ml.batch(torch.arange(32)))
    assert torch.isfinite(out["total"]) and float(out["classification"]) > 0
    out["total"].backward()


def test_stage_restricts_the_loss_terms() -> None:
    data = synth()
    m = small(MCVS)
    b = data.batch(torch.arange(32))
    other = Batch({**b.features, "c": b.features["c"] + 1.0}, b.mask, b.modalities, b.labels)
    m.set_stage("stage1")  # only a and b exist yet: c does not enter the loss
    assert torch.equal(m.loss(b)["total"], m.loss(other)["total"])
    m.set_stage("stage2")  # classification on the new modality only; pairs (a, c) and (b, c)
    out = m.loss(b)
    f = m.encode(b)
    torch.testing.assert_close(out["classification"], F.cross_entropy(m.classifier(f["c"]), b.labels))
    assert not torch.equal(out["total"], m.loss(other)["total"])
    m.set_stage(None)
    assert float(m.loss(b)["classification"]) != float(out["classification"])
    with pytest.raises(DataError):
        m.set_stage("nope")


# ---------------------------------------------------------------------------------- training
def test_cvs_learns_cross_modal_retrieval_above_chance() -> None:
    data = synth()
    m = small()
    before = mean_map(m, data)
    Trainer(m, cfg(epochs=6, lr=3e-3)).fit(data)
    after = mean_map(m, data)
    assert after > 0.6 and after > before + 0.15, (before, after)  # chance is about 1/K = 0.25


@pytest.mark.parametrize("cls,kw", [(CVS, {}), (CVS, {"attention": False, "stage_order": [["a"], ["b", "c"]]}),
                                    (MCVS, {"use_wis": False}), (RVS, {"reference": "b", "multilabel": False})])
def test_config_rebuild(cls: type[CVS], kw: dict) -> None:
    m = small(cls, **kw)
    twin = model_class(m.name)(**json.loads(json.dumps(m.config)))
    assert type(twin) is cls and twin.config == m.config
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    assert [s.name for s in twin.stages()] == [s.name for s in m.stages()]
    twin.load_state_dict(m.state_dict())
    b = synth().batch(torch.arange(8))
    with torch.no_grad():
        assert all(torch.equal(twin.encode(b)[k], v) for k, v in m.encode(b).items())


# ---------------------------------------------------------------------------- stage-wise class learning
def test_class_stages() -> None:
    y = np.array([3, 1, 0, 2, 4, 5, 6, 7, 8, 9, 9])
    groups = class_stages(y, group_size=4)
    assert [g.tolist() for g in groups] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    groups = class_stages(y, 5, order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert [g.tolist() for g in groups] == [[9, 8, 7, 6, 5], [4, 3, 2, 1, 0]]
    with pytest.raises(DataError):
        class_stages(y, 5, order=[0, 1])
    multi = np.array([[1, 0, 1], [0, 0, 1]])
    assert [g.tolist() for g in class_stages(multi, 2)] == [[0, 2]]  # class 1 never occurs


def test_train_stagewise_trains_on_new_classes_only() -> None:
    data = synth()
    m = small()
    seen_labels: list[set[int]] = []
    real_loss = m.loss

    def spy(batch: Batch) -> dict[str, torch.Tensor]:
        if m.training:
            seen_labels[-1].update(batch.labels.tolist())
        return real_loss(batch)

    m.loss = spy  # type: ignore[method-assign]
    calls = []

    def callback(k: int, model: CVS, seen: np.ndarray) -> None:
        calls.append((k, seen.tolist()))
        seen_labels.append(set())

    seen_labels.append(set())
    groups = class_stages(data.labels[data.split("train")], 2)
    models = train_stagewise(m, data, groups, cfg(), callback=callback)
    assert calls == [(0, [0, 1]), (1, [0, 1, 2, 3])]
    assert seen_labels[0] == {0, 1} and seen_labels[1] == {2, 3}
    assert len(models) == 2 and models[0] is not m
    w0, w1 = models[0].heads["a"][0].weight, models[1].heads["a"][0].weight
    assert not torch.equal(w0, w1)  # stage 2 trained on from stage 1's weights


def test_saved_grown_model_loads_back(tmp_path) -> None:
    from commonspace.train import load_model

    data = synth()
    m = small(RVS, {"a": 10, "b": 8})
    Trainer(m, cfg()).fit(data.select(["a", "b"]))
    m.add_modality("c", 6)
    Trainer(m, cfg(out_dir=tmp_path / "run")).fit(data)
    loaded = load_model(tmp_path / "run" / "model").model
    assert type(loaded) is RVS and loaded.n_attention_blocks == 2 and loaded.reference == "a"
    b = data.batch(torch.arange(16))
    with torch.no_grad():
        assert all(torch.equal(loaded.encode(b)[k], v) for k, v in m.encode(b).items())
