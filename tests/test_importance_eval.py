"""Noise-detection precision / recall / F1 from importance scores, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from commonspace.data.dataset import DataError
from commonspace.eval.importance import noise_detection_auc, noise_detection_scores

# 6 samples: 2 noise (rows 0, 1). Predicted noise (y < 0.5): rows 0, 2, 3 -> TP 1, FP 2, FN 1, TN 2.
Y = np.array([0.1, 0.9, 0.2, 0.4, 0.7, 0.6])
NOISE = np.array([True, True, False, False, False, False])


def test_by_hand():
    r = noise_detection_scores(Y, NOISE)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (1, 2, 1, 2)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 2)
    assert r["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # = 0.4
    assert r["f1"] == pytest.approx(0.4)
    assert r["accuracy"] == pytest.approx(3 / 6)
    assert r["misclassified"] == pytest.approx(0.5)
    assert isinstance(r["f1"], float)


def test_threshold_argument_and_sweep():
    # threshold 0.95: every row predicted noise -> TP 2, FP 4, recall 1
    r = noise_detection_scores(Y, NOISE, threshold=0.95)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 4, 0)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == 1.0
    sweep = noise_detection_scores(Y, NOISE, threshold=[0.05, 0.5, 0.95])
    assert sweep["f1"].shape == (3,)
    assert sweep["f1"][0] == 0.0  # nothing predicted noise: zero_division = 0
    assert sweep["precision"][0] == 0.0 and sweep["recall"][0] == 0.0
    assert sweep["f1"][1] == pytest.approx(0.4)
    assert sweep["f1"][2] == pytest.approx(r["f1"])


def test_columns_are_modalities_and_mask():
    y = torch.tensor(np.stack([Y, 1 - Y], 1))  # (6, 2): the second column flips every prediction
    truth = np.stack([NOISE, NOISE], 1)
    r = noise_detection_scores(y, truth)
    assert r["f1"].shape == (2,)
    assert r["f1"][0] == pytest.approx(0.4)
    # column 1 predicts rows 1, 4, 5 (1 - y < 0.5): TP 1, FP 2, FN 1
    assert (r["tp"][1], r["fp"][1], r["fn"][1]) == (1, 2, 1)
    # masking out rows 2 and 3 removes column 0's false positives
    mask = np.ones((6, 2), bool)
    mask[[2, 3], 0] = False
    r = noise_detection_scores(y, truth, mask=mask)
    assert r["precision"][0] == 1.0 and r["fp"][0] == 0 and r["tn"][0] == 2
    sweep = noise_detection_scores(y, truth, threshold=np.array([0.3, 0.5]))
    assert sweep["f1"].shape == (2, 2)


def test_errors():
    with pytest.raises(DataError):
        noise_detection_scores(Y, NOISE[:3])
    with pytest.raises(DataError):
        noise_detection_scores(Y, np.array([0, 2, 0, 0, 0, 0]))
    with pytest.raises(DataError):
        noise_detection_scores(Y, NOISE, threshold=[[0.5]])


def test_auc_counts_correctly_ranked_pairs():
    # noise = rows 0, 1; a perfect ranking, then one swapped pair out of 2 * 3
    y = np.array([0.1, 0.2, 0.3, 0.4, 0.9])
    noise = np.array([True, True, False, False, False])
    assert noise_detection_auc(y, noise) == 1.0
    y2 = np.array([0.35, 0.2, 0.3, 0.4, 0.9])  # 0.35 > 0.3: 1 wrong pair of 6
    assert noise_detection_auc(y2, noise) == pytest.approx(5 / 6)
    assert noise_detection_auc(1 - y, noise) == 0.0


def test_auc_per_column_mask_and_single_class():
    y = np.array([[0.1, 0.5], [0.9, 0.5], [0.8, 0.5]])
    noise = np.array([[True, False], [False, False], [False, False]])
    out = noise_detection_auc(y, noise)
    assert out[0] == 1.0 and np.isnan(out[1])
    # masking the noise row leaves one class: NaN
    assert np.isnan(noise_detection_auc(y[:, 0], noise[:, 0], mask=np.array([False, True, True])))


def test_two_means_threshold_finds_the_gap_wherever_it_is() -> None:
    from commonspace.eval.importance import two_means_threshold

    y = np.array([0.60, 0.62, 0.61, 0.95, 0.97, 0.96, 0.98])  # all above 0.5; the gap is between 0.62 and 0.95
    t = two_means_threshold(y)
    assert t == pytest.approx((0.62 + 0.95) / 2)
    r = noise_detection_scores(y, y < 0.7, threshold=t)
    assert r["f1"] == 1.0
    cols = two_means_threshold(np.stack([y, 1 - y], 1))
    assert cols.shape == (2,) and cols[1] == pytest.approx(1 - (0.62 + 0.95) / 2)
    # brute force: the chosen cut minimises the summed within-group squared deviation
    rng = np.random.default_rng(0)
    z = rng.random(40)
    t = two_means_threshold(z)
    def within(cut: float) -> float:
        lo, hi = z[z < cut], z[z >= cut]
        return float(((lo - lo.mean()) ** 2).sum() + ((hi - hi.mean()) ** 2).sum())
    cuts = (np.sort(z)[1:] + np.sort(z)[:-1]) / 2
    assert within(t) == pytest.approx(min(within(c) for c in cuts))
    assert two_means_threshold(np.full(5, 0.3)) == 0.5
    with pytest.raises(DataError, match="NaN"):
        two_means_threshold(np.array([0.1, np.nan]))


def test_prior_quantile_threshold_detects_the_prior_share() -> None:
    from commonspace.eval.importance import prior_quantile_threshold

    y = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.95, 0.8, 0.6, 0.85, 0.2])
    t = prior_quantile_threshold(y, 0.8)  # 1 - rho = 20% of 10: the two lowest, 0.1 and 0.2
    assert t == pytest.approx(0.25) and isinstance(t, float)
    assert (y < t).sum() == 2
    assert prior_quantile_threshold(y, 0.75) == pytest.approx(0.4)  # 2.5 -> 3 (half up): 0.1, 0.2, 0.3
    assert (y < prior_quantile_threshold(y, 1.0)).sum() == 0
    assert (y < prior_quantile_threshold(y, 0.0)).sum() == 10
    # the scale does not matter: every value above 0.5, the same items are found
    assert ((0.9 + 0.1 * y) < prior_quantile_threshold(0.9 + 0.1 * y, 0.8)).sum() == 2
    cols = prior_quantile_threshold(torch.tensor(np.stack([y, 1 - y], 1)), [0.8, 0.5])
    assert cols.shape == (2,) and cols[0] == pytest.approx(0.25) and cols[1] == pytest.approx((0.3 + 0.4) / 2)
    np.testing.assert_allclose(prior_quantile_threshold(np.stack([y, y], 1), 0.9), [0.15, 0.15])
    with pytest.raises(DataError, match="rho must be in"):
        prior_quantile_threshold(y, 1.5)
    with pytest.raises(DataError, match="rho must be in"):
        prior_quantile_threshold(np.stack([y, y], 1), [0.5, 0.5, 0.5])
    with pytest.raises(DataError, match="non-empty"):
        prior_quantile_threshold(np.zeros(0), 0.5)


def test_two_means_threshold_columns_match_one_column_at_a_time() -> None:
    from commonspace.eval.importance import two_means_threshold

    rng = np.random.default_rng(1)
    y = np.round(rng.random((30, 3)), 1)  # many ties
    y[:, 2] = 0.4  # a constant column: no cut, 0.5
    cols = two_means_threshold(y)
    assert cols.tolist() == [two_means_threshold(y[:, j]) for j in range(3)] and cols[2] == 0.5
    assert two_means_threshold(np.array([0.7])) == 0.5
