"""Validation and behaviour of MultimodalDataset, Batch and Standardizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from commonspace.data import DataError, MultimodalDataset, Standardizer


def _ds(n: int = 20, seed: int = 0, **kw) -> MultimodalDataset:
    rng = np.random.default_rng(seed)
    feats = {"a": rng.normal(size=(n, 3)), "b": rng.normal(size=(n, 2))}
    kw.setdefault("labels", np.arange(n) % 2)
    return MultimodalDataset(feats, **kw)


def test_valid_dataset_basics():
    d = _ds(splits={"train": np.arange(10), "val": np.arange(10, 15), "test": np.arange(15, 20)})
    assert len(d) == 20 and d.modalities == ("a", "b") and d.dims == {"a": (3,), "b": (2,)}
    assert d.mask.dtype == torch.bool and bool(d.mask.all())
    assert d.num_classes == 2 and not d.multilabel
    assert d.summary()["splits"] == {"train": 10, "val": 5, "test": 5}
    b = d.batch(d.split("val"))
    assert len(b) == 5 and b.features["a"].shape == (5, 3) and b.labels.tolist() == [0, 1, 0, 1, 0]


def test_different_sample_counts():
    with pytest.raises(DataError, match="samples but"):
        MultimodalDataset({"a": np.zeros((5, 2)), "b": np.zeros((4, 2))})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf(bad):
    x = np.zeros((5, 2))
    x[3, 1] = bad
    with pytest.raises(DataError, match=r"NaN or inf \(first bad rows \[3\]\)"):
        MultimodalDataset({"a": x})


def test_bad_shapes_names_and_empty():
    with pytest.raises(DataError, match="expected \\(N, d\\)"):
        MultimodalDataset({"a": np.zeros(5)})
    with pytest.raises(DataError, match="not a valid name"):
        MultimodalDataset({"1a": np.zeros((5, 2))})
    with pytest.raises(DataError, match="non-empty"):
        MultimodalDataset({})
    with pytest.raises(DataError, match="no samples"):
        MultimodalDataset({"a": np.zeros((0, 2))})


def test_mask_contradicting_data():
    mask = np.ones((20, 2), bool)
    mask[4, 1] = False
    with pytest.raises(DataError, match="missing for 1 samples \\(first \\[4\\]\\)"):
        _ds(mask=mask)


def test_mask_shape_and_values():
    with pytest.raises(DataError, match="mask has shape"):
        _ds(mask=np.ones((20, 3), bool))
    with pytest.raises(DataError, match="boolean or 0/1"):
        _ds(mask=np.full((20, 2), 2))


def test_mask_with_zero_rows_ok():
    d = _ds()
    x = d.features["b"].clone()
    x[:3] = 0
    mask = d.mask.clone()
    mask[:3, 1] = False
    d2 = d.replace({"a": d.features["a"], "b": x}, mask)
    assert d2.summary()["missing"] == {"a": 0, "b": 3}


def test_labels_wrong_shape_and_values():
    with pytest.raises(DataError, match="labels have shape"):
        _ds(labels=np.zeros(19, int))
    with pytest.raises(DataError, match="labels have shape"):
        _ds(labels=np.zeros((20, 2, 2), int))
    with pytest.raises(DataError, match="integers"):
        _ds(labels=np.full(20, 0.5))
    with pytest.raises(DataError, match=">= 0"):
        _ds(labels=np.full(20, -1))
    with pytest.raises(DataError, match="0/1 indicators"):
        _ds(labels=np.full((20, 3), 2))


def test_multilabel_and_column_labels():
    d = _ds(labels=np.eye(4, dtype=int)[np.arange(20) % 4])
    assert d.multilabel and d.num_classes == 4 and d.labels.dtype == torch.bool
    d = _ds(labels=(np.arange(20) % 3)[:, None])  # (N, 1) reads as class ids
    assert not d.multilabel and d.num_classes == 3


def test_split_errors():
    with pytest.raises(DataError, match="is empty"):
        _ds(splits={"train": np.array([], int)})
    with pytest.raises(DataError, match="outside"):
        _ds(splits={"train": np.array([0, 20])})
    with pytest.raises(DataError, match="twice"):
        _ds(splits={"train": np.array([1, 1])})
    with pytest.raises(DataError, match="'train' and 'test' share samples"):
        _ds(splits={"train": np.arange(10), "test": np.arange(9, 20)})
    with pytest.raises(DataError, match="non-integer"):
        _ds(splits={"train": np.array([0.0, 1.5])})
    with pytest.raises(DataError, match="no split 'val'.*available: \\['train'\\]"):
        _ds(splits={"train": np.arange(5)}).split("val")


def test_boolean_split_and_other_splits_may_overlap():
    sel = np.zeros(20, bool)
    sel[[2, 5]] = True
    d = _ds(splits={"train": sel, "query": np.arange(3), "database": np.arange(20)})
    assert d.split("train").tolist() == [2, 5]


def test_unknown_modality():
    d = _ds()
    with pytest.raises(DataError, match="unknown modalities \\['c'\\]"):
        d.select(["a", "c"])
    with pytest.raises(DataError, match="unknown modalities"):
        d.check_modalities(["zzz"])
    with pytest.raises(DataError, match="not a string"):
        d.select("a")
    with pytest.raises(DataError, match="unknown modalities"):
        d.batch().only(["c"])
    s = d.select(["b"])
    assert s.modalities == ("b",) and s.mask.shape == (20, 1)


def test_dtypes_accepted():
    x = np.arange(10, dtype=">f8").reshape(5, 2)  # big-endian, as from some .mat/HDF5 files
    d = MultimodalDataset({"a": x, "b": np.ones((5, 2), np.uint16)}, labels=np.arange(5, dtype=np.uint32))
    assert d.features["a"].dtype == torch.float32 and d.features["a"][4, 1] == 9
    with pytest.raises(DataError, match="cannot convert"):
        MultimodalDataset({"a": np.array([["x", "y"]])})


def test_standardizer_fits_on_train_only():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4))
    x[20:] += 1000.0  # huge test rows must not move the mean
    mask = np.ones((30, 2), bool)
    mask[[3, 25], 1] = False
    y = rng.normal(size=(30, 2))
    y[[3, 25]] = 0
    d = MultimodalDataset({"x": x, "y": y}, mask, splits={"train": np.arange(20), "test": np.arange(20, 30)})
    st = Standardizer().fit(d, "train")
    np.testing.assert_allclose(st.mean["x"].numpy(), x[:20].mean(0), rtol=1e-5)
    rows = [i for i in range(20) if i != 3]  # only present rows count
    np.testing.assert_allclose(st.mean["y"].numpy(), y[rows].mean(0), rtol=1e-5, atol=1e-6)
    z = st.transform(d)
    zx = z.features["x"][:20].double()
    np.testing.assert_allclose(zx.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(zx.std(0, unbiased=False).numpy(), 1, atol=1e-4)
    assert z.features["y"][[3, 25]].abs().sum() == 0  # missing rows stay zero
    st2 = Standardizer().load_state_dict(st.state_dict())
    torch.testing.assert_close(st2.transform(d).features["x"], z.features["x"])


def test_standardizer_errors():
    d = _ds(splits={"train": np.arange(10)})
    with pytest.raises(DataError, match="before fit"):
        Standardizer().transform(d)
    mask = np.ones((20, 2), bool)
    mask[:10, 1] = False
    feats = {"a": d.features["a"], "b": d.features["b"] * torch.as_tensor(mask[:, 1:])}
    with pytest.raises(DataError, match="missing for every sample"):
        Standardizer().fit(MultimodalDataset(feats, mask, splits={"train": np.arange(10)}))


def test_drop_modalities():
    d = _ds(n=100, splits={"train": np.arange(60), "test": np.arange(60, 100)})
    out = d.drop_modalities(0.5, split="train", seed=3)
    dropped = ~out.mask
    assert int(dropped.any(1).sum()) == 30 and int(dropped[60:].sum()) == 0
    assert bool(out.mask.any(1).all())  # every sample keeps at least one modality
    for j, m in enumerate(out.modalities):
        assert out.features[m][~out.mask[:, j]].abs().sum() == 0
    again = d.drop_modalities(0.5, split="train", seed=3)
    assert torch.equal(again.mask, out.mask)  # seeded
    kept = d.drop_modalities(1.0, keep="a")
    assert bool(kept.mask[:, 0].all()) and not bool(kept.mask[:, 1].any())
    assert bool(d.mask.all())  # original untouched
    with pytest.raises(DataError, match="fraction"):
        d.drop_modalities(1.5)
    with pytest.raises(DataError, match="only 0 are complete"):
        kept.drop_modalities(0.5)
    with pytest.raises(DataError, match="unknown modalities"):
        d.drop_modalities(0.1, keep="nope")
    with pytest.raises(DataError, match="at least two"):
        d.select(["a"]).drop_modalities(0.1)


def test_iter_batches_and_subset():
    d = _ds(n=25, splits={"train": np.arange(20), "test": np.arange(20, 25)})
    sizes = [len(b) for b in d.iter_batches("train", batch_size=8)]
    assert sizes == [8, 8, 4]
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([b.index for b in d.iter_batches("train", 8, shuffle=True, generator=g)])
    assert sorted(seen.tolist()) == list(range(20))
    s = d.subset("test")
    assert len(s) == 5 and s.splits == {} and s.name.endswith("[test]")
