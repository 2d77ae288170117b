"""Classification probes on learnt representations: the IMA paper's 2-layer ReLU MLP and logistic regression.

Both fit on ``train``, optionally select on ``val`` and score ``test`` once. Single-label targets are class
ids ``(N,)``; multi-label targets are 0/1 ``(N, C)`` indicators. See ``docs/metrics.md``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from commonspace.data.dataset import DataError
from commonspace.train.optim import make_adam

__all__ = ["classification_map", "logistic_probe", "logistic_probe_many", "mlp_probe"]


def _np(x: object, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: cannot convert to an array ({exc})") from exc


def _check_xy(x: object, y: object, what: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    xa = _np(x, f"{what}_x").astype(np.float64, copy=False)
    ya = _np(y, f"{what}_y")
    if xa.ndim != 2:
        raise DataError(f"{what}_x must be (N, d) vectors, got shape {xa.shape}")
    if dim is not None and xa.shape[1] != dim:
        raise DataError(f"{what}_x has {xa.shape[1]} features but train_x has {dim}")
    if not np.isfinite(xa).all():
        raise DataError(f"{what}_x contains NaN or inf")
    if ya.ndim == 2 and ya.shape[1] == 1:
        ya = ya[:, 0]
    if ya.ndim not in (1, 2) or ya.shape[0] != xa.shape[0]:
        raise DataError(f"{what}_y has shape {ya.shape}; expected ({xa.shape[0]},) class ids or "
                        f"({xa.shape[0]}, C) 0/1 indicators")
    if ya.ndim == 2:
        if not np.isin(ya, (0, 1)).all():
            raise DataError(f"{what}_y: multi-label targets must be 0/1 indicators")
        ya = ya.astype(np.int64)
    else:
        if ya.dtype.kind == "f" and not np.all(ya == np.round(ya)):
            raise DataError(f"{what}_y: class ids must be integers")
        ya = ya.astype(np.int64)
    return xa, ya


def classification_map(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Multi-label "classification MAP": macro mean over labels of sklearn's ``average_precision_score``.

    Labels with no positive test example are skipped (their AP is undefined).
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    keep = y_true.sum(0) > 0
    if not keep.any():
        return float("nan")
    return float(average_precision_score(y_true[:, keep], y_score[:, keep], average="macro"))


def _scores(y: np.ndarray, pred: np.ndarray, prob: np.ndarray | None, classes: np.ndarray | None = None) -> dict:
    """Accuracy and error, and classification MAP when class probabilities are given.

    Single-label MAP treats each class as a binary retrieval of the test items by that class's probability
    (one-vs-rest, the MIR-Flickr style "classification MAP"); ``classes`` names the probability columns.
    """
    if y.ndim == 1:
        acc = float((pred == y).mean())
        out = {"accuracy": acc, "error": 1.0 - acc}
        if prob is not None:
            cls = np.arange(prob.shape[1]) if classes is None else np.asarray(classes)
            out["map"] = classification_map((y[:, None] == cls[None, :]).astype(np.int64), prob)
        return out
    acc = float((pred == y).mean())  # label-wise (1 - Hamming loss)
    out = {"accuracy": acc, "error": 1.0 - acc, "exact_match": float((pred == y).all(1).mean())}
    if prob is not None:
        out["map"] = classification_map(y, prob)
    return out


def _standardize(train: np.ndarray, *others: np.ndarray | None) -> list[np.ndarray | None]:
    sc = StandardScaler().fit(train)
    return [sc.transform(train)] + [None if o is None else sc.transform(o) for o in others]


def _check_train(train_x, train_y, val):
    """Validate train(/val) features and targets; returns them and ``multi``."""
    xtr, ytr = _check_xy(train_x, train_y, "train")
    xva = yva = None
    if val is not None:
        xva, yva = _check_xy(val[0], val[1], "val", xtr.shape[1])
        if yva.ndim != ytr.ndim:
            raise DataError("train, val and test targets must all be class ids or all be multi-label indicators")
    return xtr, ytr, xva, yva, ytr.ndim == 2


def _check_test(test_x, test_y, xtr: np.ndarray, ytr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate one test set against the (checked) train set."""
    xte, yte = _check_xy(test_x, test_y, "test", xtr.shape[1])
    if yte.ndim != ytr.ndim:
        raise DataError("train, val and test targets must all be class ids or all be multi-label indicators")
    return xte, yte


def _check_inputs(train_x, train_y, test_x, test_y, val):
    """Validate train/test(/val) features and targets of one kind; returns them and ``multi``."""
    xtr, ytr, xva, yva, multi = _check_train(train_x, train_y, val)
    xte, yte = _check_test(test_x, test_y, xtr, ytr)
    return xtr, ytr, xte, yte, xva, yva, multi


def mlp_probe(
    train_x: object,
    train_y: object,
    test_x: object,
    test_y: object,
    hidden: int = 256,
    epochs: int = 200,
    seed: int = 0,
    val: tuple[object, object] | None = None,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    patience: int = 20,
    standardize: bool = True,
) -> dict:
    """The IMA paper's classifier: input -> ``hidden`` ReLU -> output (softmax, or per-label sigmoid).

    Adam on cross-entropy (single-label) or binary cross-entropy (multi-label), full-batch when
    ``batch_size`` is None, otherwise seeded shuffled mini-batches. With ``val=(x, y)`` the weights of
    the epoch with the lowest validation loss are kept and training stops after ``patience`` epochs
    without improvement. Returns ``accuracy``, ``error``, ``epochs`` run and ``best_epoch``; multi-label
    adds ``map`` (macro classification MAP) and ``exact_match``, and its accuracy is label-wise.
    Runs under a forked RNG: the global torch seed is untouched and the same ``seed`` gives the same result.
    """
    xtr, ytr, xte, yte, xva, yva, multi = _check_inputs(train_x, train_y, test_x, test_y, val)
    if epochs < 1 or hidden < 1:
        raise DataError(f"epochs and hidden must be >= 1, got epochs={epochs} hidden={hidden}")
    if standardize:
        xtr, xte, xva = _standardize(xtr, xte, xva)
    if multi:
        n_out = ytr.shape[1]
        if yte.shape[1] != n_out or (yva is not None and yva.shape[1] != n_out):
            raise DataError("train, val and test multi-label targets must have the same number of labels")
    else:
        if (ytr < 0).any() or (yte < 0).any():
            raise DataError("class ids must be >= 0")
        n_out = int(max(ytr.max(), yte.max(), -1 if yva is None else yva.max())) + 1

    def t(a: np.ndarray | None, target: bool = False) -> Tensor | None:
        if a is None:
            return None
        if target and not multi:
            return torch.as_tensor(a, dtype=torch.int64)
        return torch.as_tensor(a, dtype=torch.float32)

    Xtr, Ytr, Xte, Xva, Yva = t(xtr), t(ytr, True), t(xte), t(xva), t(yva, True)
    loss_fn: nn.Module = nn.BCEWithLogitsLoss() if multi else nn.CrossEntropyLoss()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(Xtr.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, n_out))
        gen = torch.Generator().manual_seed(seed)
        opt = make_adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        best = (float("inf"), 0, None)
        bad = 0
        n = Xtr.shape[0]
        epoch = 0
        for epoch in range(1, epochs + 1):
            model.train()
            if batch_size is None or batch_size >= n:
                batches = [slice(None)]
            else:
                perm = torch.randperm(n, generator=gen)
                batches = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
            for b in batches:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(Xtr[b]), Ytr[b])
                loss.backward()
                opt.step()
            if Xva is not None:
                model.eval()
                with torch.no_grad():
                    vloss = float(loss_fn(model(Xva), Yva))
                if vloss < best[0]:
                    best = (vloss, epoch, copy.deepcopy(model.state_dict()))
                    bad = 0
                else:
                    bad += 1
                    if bad >= patience:
                        break
        if best[2] is not None:
            model.load_state_dict(best[2])
        model.eval()
        with torch.no_grad():
            logits = model(Xte)
    if multi:
        prob = torch.sigmoid(logits).numpy()
        res = _scores(yte, (prob >= 0.5).astype(np.int64), prob)
    else:
        res = _scores(yte, logits.argmax(1).numpy(), torch.softmax(logits, 1).numpy())
    res["epochs"] = epoch
    res["best_epoch"] = best[1] if best[2] is not None else epoch
    return res


def logistic_probe(
    train_x: object,
    train_y: object,
    test_x: object,
    test_y: object,
    C: float | Sequence[float] = 1.0,
    max_iter: int = 5000,
    val: tuple[object, object] | None = None,
    *,
    seed: int = 0,
    standardize: bool = True,
) -> dict:
    """Logistic regression (scikit-learn, lbfgs) on standardised inputs.

    Multi-label targets use one-vs-rest (one binary model per label). A sequence of ``C`` values needs
    ``val``: the C with the best validation accuracy (classification MAP for multi-label) is used.
    Returns ``accuracy``, ``error`` and ``C``; multi-label adds ``map`` and ``exact_match``.
    """
    return logistic_probe_many(train_x, train_y, {"test": (test_x, test_y)}, C, max_iter, val, seed=seed,
                               standardize=standardize)["test"]


def logistic_probe_many(
    train_x: object,
    train_y: object,
    tests: Mapping[str, tuple[object, object]],
    C: float | Sequence[float] = 1.0,
    max_iter: int = 5000,
    val: tuple[object, object] | None = None,
    *,
    seed: int = 0,
    standardize: bool = True,
) -> dict[str, dict]:
    """One :func:`logistic_probe` fitted once on train and scored on every named test set.

    For missing-modality studies: fit on the joint code of complete samples, test on codes computed from
    each input condition. Standardisation statistics come from train alone. Returns ``{name: scores}``.
    """
    if not tests:
        raise DataError("tests is empty: give at least one (name, (test_x, test_y)) test set")
    xtr, ytr, xva, yva, multi = _check_train(train_x, train_y, val)
    checked = {name: _check_test(tx, ty, xtr, ytr) for name, (tx, ty) in tests.items()}
    scaler = StandardScaler().fit(xtr) if standardize else None

    def prep(x: np.ndarray | None) -> np.ndarray | None:
        return x if scaler is None or x is None else scaler.transform(x)

    xtr, xva = prep(xtr), prep(xva)
    cs = [float(C)] if np.isscalar(C) else [float(c) for c in C]
    if not cs or any(c <= 0 for c in cs):
        raise DataError(f"C must be positive, got {C}")
    if len(cs) > 1 and val is None:
        raise DataError("several C values need val=(x, y) to choose between them (never the test split)")

    def fit(c: float):
        base = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        model = OneVsRestClassifier(base) if multi else base
        # one BLAS thread: lbfgs evaluates a small (N, d) x (d, C) product hundreds of times, where thread
        # start-up costs more than it saves, and 10x more on a loaded machine (0.8 s -> 0.07 s, 1078 x 128)
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            # a label constant in train makes OneVsRest warn; it still predicts that constant
            warnings.simplefilter("ignore", UserWarning)
            return model.fit(xtr, ytr)

    def evaluate(model, x: np.ndarray, y: np.ndarray) -> dict:
        if multi:
            prob = model.predict_proba(x)
            return _scores(y, (prob >= 0.5).astype(np.int64), prob)
        prob = model.predict_proba(x)
        return _scores(y, model.classes_[prob.argmax(1)], prob, model.classes_)

    best_c, model = cs[0], None
    if len(cs) > 1:
        best_v = -np.inf
        for c in cs:
            m = fit(c)
            r = evaluate(m, xva, yva)
            v = r["map"] if multi else r["accuracy"]
            if v > best_v:
                best_v, best_c, model = v, c, m
    else:
        model = fit(best_c)
    out = {}
    for name, (xte, yte) in checked.items():
        out[name] = evaluate(model, prep(xte), yte) | {"C": best_c}
    return out
