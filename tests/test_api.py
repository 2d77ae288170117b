"""The scikit-learn style facade: fit on arrays, transform with a modality absent, save and load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from commonspace import CommonSpace, DataError


def _arrays(n: int = 90, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return {"image": rng.normal(size=(3, 5))[y] + 0.2 * rng.normal(size=(n, 5)),
            "text": rng.normal(size=(3, 4))[y] + 0.2 * rng.normal(size=(n, 4))}, y


def test_fit_transform_encode_save_load(tmp_path: Path) -> None:
    x, y = _arrays()
    cs = CommonSpace("bidnn", epochs=3, hidden=16, central=8).fit(x, labels=y)
    z = cs.transform(x)
    assert z.shape == (90, 16)
    only_image = cs.transform({"image": x["image"]})
    # the missing text half is the duplicated image half (BiDNN's rule)
    np.testing.assert_allclose(only_image[:, :8], only_image[:, 8:])
    np.testing.assert_allclose(only_image[:, :8], z[:, :8], atol=1e-6)
    enc = cs.encode({"text": x["text"]})
    assert set(enc) == {"text"} and enc["text"].shape == (90, 8)
    cs.save(tmp_path / "m")
    back = CommonSpace.load(tmp_path / "m")
    np.testing.assert_array_equal(back.transform(x), z)


def test_facade_errors() -> None:
    x, y = _arrays()
    with pytest.raises(DataError, match="not fitted"):
        CommonSpace("bidnn").transform(x)
    cs = CommonSpace("cca").fit(x, labels=y)
    with pytest.raises(DataError, match="unknown modalities"):
        cs.transform({"audio": x["image"]})
    with pytest.raises(DataError, match="different sample counts"):
        cs.transform({"image": x["image"], "text": x["text"][:10]})


def test_facade_robustness_with_and_without_a_probe() -> None:
    x, y = _arrays(120)
    cs = CommonSpace("contrastive", epochs=3, hidden=[8], dim=4).fit(x, labels=y)
    res = cs.robustness(x, y, subsets=["image", "text", "image,text"], drop_rates=(0.5,), train=(x, y))
    assert [r["subset"] for r in res["rows"]] == ["image", "text", "image+text", "drop 0.5"]
    assert all(0.0 <= r["joint"]["map"] <= 1.0 and "probe" in r for r in res["rows"])
    assert res["queries"] == 120 and res["database"] == 120
    plain = cs.robustness(x, y)
    assert "probe" not in plain["rows"][0] and len(plain["rows"]) == 3
    assert plain["rows"][2]["joint"] == res["rows"][2]["joint"]
    with pytest.raises(DataError, match="unknown modalities"):
        cs.robustness(x, y, subsets=["audio"])
