"""CVS / M-CVS / RVS tests that pin the method against hand computations (thesis Sec. 3.1-3.3).

1. The whole loss ``alpha L_c + beta L_t`` (Eq. 3.1.4-3.1.7) written straight from the definitions with plain
   Python loops (gamma weights, margins, which modality pairs enter, the symmetrised inter-modal term, semi-hard
   mining) against ``model.loss`` on a six-sample batch of three modalities.
2. How one modality combines several aligned attention blocks (Eq. 3.1.11-3.1.14, RVS Eq. 3.3.1-3.3.6),
   computed with ``math`` from the block weights.
3. The strict (each modality encoded alone) and paired (all present modalities, the thesis) encodings of the
   CVS benchmark: what differs and what is equal.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from commonspace.bench.specs.cvs import encode_paired, encode_strict
from commonspace.data.dataset import Batch, MultimodalDataset
from commonspace.models.cvs import CVS, MCVS, RVS

DIMS = {"a": 4, "b": 3, "c": 5}
MODS = tuple(DIMS)
Vec = list[float]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only contend
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- hand helpers
def vecmat(v: Vec, m: list[Vec]) -> Vec:
    """Row vector times matrix, ``v M``."""
    return [sum(v[i] * m[i][j] for i in range(len(v))) for j in range(len(m[0]))]


def softmax(v: Vec) -> Vec:
    top = max(v)
    e = [math.exp(x - top) for x in v]
    return [x / sum(e) for x in e]


def normalise(v: Vec) -> Vec:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def sqdist(u: Vec, v: Vec) -> float:
    """Eq. 3.1.2."""
    return sum((p - q) ** 2 for p, q in zip(u, v, strict=True))


def rows(t: torch.Tensor) -> list[Vec]:
    return t.detach().tolist()


def hand_alpha(block: torch.nn.Module, g_i: Vec, g_s: Vec, w_out: list[Vec]) -> Vec:
    """``softmax(W tanh(g_i W_i + g_s W_s + (g_i * g_s) W_is))`` (Eq. 3.1.11-3.1.12; 3.3.1-3.3.4 with W_ie/W_se)."""
    pre = [0.0] * len(w_out)
    if block.use_wi:
        pre = [p + t for p, t in zip(pre, vecmat(g_i, rows(block.w_i)), strict=True)]
    if block.use_ws:
        pre = [p + t for p, t in zip(pre, vecmat(g_s, rows(block.w_s)), strict=True)]
    if block.use_wis:
        prod = [x * y for x, y in zip(g_i, g_s, strict=True)]
        pre = [p + t for p, t in zip(pre, vecmat(prod, rows(block.w_is)), strict=True)]
    return softmax(vecmat([math.tanh(p) for p in pre], w_out))


def updates(model: CVS) -> dict[str, list[tuple[str, str]]]:
    """The (block, side) pairs that rescale each modality, from the thesis (and docs/methods.md) readings:
    CVS every block of the modality; M-CVS a block rescales its older modality only when both belong to the
    block's stage (Sec. 3.2: a new modality must not move the old ones); RVS the reference side (3.3.5) only in
    first-stage blocks, the other side (3.3.6) always."""
    stage = {m: k for k, g in enumerate(model.stage_groups) for m in g}
    out: dict[str, list[tuple[str, str]]] = {m: [] for m in model.modalities}
    for key in model.blocks:
        i, s = key.split("|")
        block_stage = max(stage[i], stage[s])
        if stage[i] == block_stage:
            out[i].append((key, "i"))
        out[s].append((key, "s"))
    return out


def hand_vectors(model: CVS, batch: Batch) -> dict[str, list[Vec | None]]:
    """``f_m`` per sample: ``g_m + mean(alpha over the blocks whose partner is present) * g_m``, L2-normalised;
    None for an absent modality. The heads (plain MLPs, Eq. 3.1.1) are trusted."""
    mask = batch.mask.tolist()
    col = {m: batch.modalities.index(m) for m in model.modalities}
    with torch.no_grad():
        g = {m: rows(model.heads[m](batch.features[m] * batch.present(m).reshape(-1, 1))) for m in model.modalities}
    ups = updates(model)
    f: dict[str, list[Vec | None]] = {m: [] for m in model.modalities}
    for r in range(len(batch)):
        for m in model.modalities:
            if not mask[r][col[m]]:
                f[m].append(None)
                continue
            alphas = []
            for key, side in ups[m]:
                i, s = key.split("|")
                if not (mask[r][col[i]] and mask[r][col[s]]):
                    continue
                block = model.blocks[key]
                if isinstance(model, RVS):
                    w_out = rows(model.w_ie) if side == "i" else rows(block.w_se)
                else:
                    w_out = rows(block.w_e)
                alphas.append(hand_alpha(block, g[i][r], g[s][r], w_out))
            v = g[m][r]
            if alphas:
                mean = [sum(a[j] for a in alphas) / len(alphas) for j in range(len(v))]
                v = [x + a * x for x, a in zip(v, mean, strict=True)]
            f[m].append(normalise(v))
    return f


# ------------------------------------------------------------------------------- 1. brute-force Eq. 3.1.6
def related(ya: object, yb: object) -> bool:
    """Positive: same class id, or (multi-label) at least one shared label."""
    if isinstance(ya, list):
        return any(p and q for p, q in zip(ya, yb, strict=True))
    return ya == yb


def brute_T(fu: list[Vec | None], fv: list[Vec | None], y: list, margin: float, same: bool,
            stats: dict[str, int]) -> float:
    """``T(u -> v)``: mean over every (anchor in u, positive in v) of ``max(0, d_ap - d_an + margin)`` with the
    semi-hard negative (``d_ap < d_an < d_ap + margin``, the closest such) or else the hardest (closest) one;
    anchors without a negative give no triplet, a sample is never its own positive in an intra term."""
    losses = []
    n = len(y)
    for a in range(n):
        if fu[a] is None:
            continue
        negs = [k for k in range(n) if fv[k] is not None and not related(y[a], y[k])]
        if not negs:
            continue
        for p in range(n):
            if fv[p] is None or not related(y[a], y[p]) or (same and p == a):
                continue
            d_ap = sqdist(fu[a], fv[p])
            band = [k for k in negs if d_ap < sqdist(fu[a], fv[k]) < d_ap + margin]
            k = min(band or negs, key=lambda k: (sqdist(fu[a], fv[k]), k))
            loss = max(0.0, d_ap - sqdist(fu[a], fv[k]) + margin)
            stats["semihard" if band else "fallback"] += 1
            stats["zero" if loss == 0.0 else "positive"] += 1
            losses.append(loss)
    return sum(losses) / len(losses) if losses else 0.0


def brute_classification(model: CVS, f: dict[str, list[Vec | None]], y: list, mods: list[str]) -> float:
    """Eq. 3.1.4-3.1.5: softmax cross-entropy (multi-label: sigmoid BCE, mean over classes) of the shared
    classifier, mean over the present (sample, modality) rows of ``mods``."""
    w, b = rows(model.classifier.weight), model.classifier.bias.tolist()
    per = []
    for m in mods:
        for r, v in enumerate(f[m]):
            if v is None:
                continue
            s = [sum(wi * vi for wi, vi in zip(row, v, strict=True)) + bi for row, bi in zip(w, b, strict=True)]
            if isinstance(y[r], list):
                per.append(sum(max(z, 0.0) - z * t + math.log1p(math.exp(-abs(z))) for z, t in zip(s, y[r],
                                                                                                   strict=True))
                           / len(s))
            else:
                top = max(s)
                per.append(top + math.log(sum(math.exp(z - top) for z in s)) - s[y[r]])
    return sum(per) / len(per)


def brute_loss(model: CVS, batch: Batch, pairs: list[tuple[str, str]], class_mods: list[str], *,
               swap_gammas: bool = False, one_way: bool = False) -> tuple[float, float, float, dict[str, int]]:
    """``(total, L_c, L_t, stats)``: Eq. 3.1.7 with Eq. 3.1.6 summed over the given modality pairs ``(x, y)``:
    ``gamma_1 T(x->x; a_1) + gamma_2 T(y->y; a_2) + gamma_3 [T(x->y; a_3) + T(y->x; a_3)] / 2``. The keyword
    switches give the readings the code must *not* match (to show the test can tell them apart)."""
    c = model.config
    g1, g2, g3 = c["gammas"]
    if swap_gammas:
        g1, g2 = g2, g1
    m1, m2, m3 = c["margins"]
    y = batch.labels.tolist()
    f = hand_vectors(model, batch)
    stats = {"semihard": 0, "fallback": 0, "zero": 0, "positive": 0}
    l_t = 0.0
    for x, z in pairs:
        inter = brute_T(f[x], f[z], y, m3, False, stats) if one_way else 0.5 * (
            brute_T(f[x], f[z], y, m3, False, stats) + brute_T(f[z], f[x], y, m3, False, stats))
        l_t += g1 * brute_T(f[x], f[x], y, m1, True, stats) + g2 * brute_T(f[z], f[z], y, m2, True, stats) + g3 * inter
    l_c = brute_classification(model, f, y, class_mods)
    return c["alpha"] * l_c + c["beta"] * l_t, l_c, l_t, stats


LOSS_KW = {"n_classes": 3, "dim": 6, "hidden": (16,), "alpha": 0.7, "beta": 1.3, "margins": (0.3, 0.5, 0.8),
           "gammas": (0.15, 0.35, 0.5)}


def loss_batch(missing: bool, multilabel: bool = False) -> Batch:
    """Six samples, three modalities, three classes; ``missing`` drops one modality of three samples and fills
    the dropped rows with garbage (the model must read the mask, not the values)."""
    gen = torch.Generator().manual_seed(11)
    feats = {m: torch.randn(6, d, generator=gen, dtype=torch.float64) for m, d in DIMS.items()}
    mask = torch.ones(6, 3, dtype=torch.bool)
    if missing:
        mask[0, 2] = mask[3, 1] = mask[5, 0] = False
        feats = {m: torch.where(mask[:, j:j + 1], x, torch.full_like(x, 1e3)) for j, (m, x) in enumerate(feats.items())}
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    if multilabel:
        y = F.one_hot(y, 3).bool()
        y[1, 2] = True  # sample 1 relates to classes 1 and 2
    return Batch(feats, mask, MODS, y)


# (model, stage, pairs of Eq. 3.1.6 in the thesis's reading, modalities of the classification loss)
LOSS_CASES = {
    "cvs": (CVS, {}, None, [("a", "b"), ("a", "c"), ("b", "c")], ["a", "b", "c"]),
    # stage 2 adds c: only the pairs with c change, and only c is classified (the rest is frozen)
    "mcvs-stage2": (MCVS, {}, "stage2", [("a", "c"), ("b", "c")], ["c"]),
    # RVS: every modality paired with the reference only, the reference as x (gamma_1, anchor of the 1st T)
    "rvs-ref-b": (RVS, {"reference": "b"}, None, [("b", "a"), ("b", "c")], ["a", "b", "c"]),
}


@pytest.mark.parametrize("missing", [False, True], ids=["paired", "missing"])
@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_loss_equals_brute_force_eq_3_1_6(case: str, missing: bool) -> None:
    cls, kw, stage, pairs, class_mods = LOSS_CASES[case]
    torch.manual_seed(5)
    model = cls(DIMS, **LOSS_KW, **kw).double()
    model.set_stage(stage)
    batch = loss_batch(missing)
    out = model.loss(batch)
    total, l_c, l_t, stats = brute_loss(model, batch, pairs, class_mods)
    assert abs(float(out["total"].detach()) - total) < 1e-10
    assert abs(float(out["classification"]) - l_c) < 1e-10
    assert abs(float(out["triplet"]) - l_t) < 1e-10
    # semi-hard, hard-fallback and easy-fallback (zero-loss) triplets all occur: no mining branch goes untested
    assert stats["semihard"] > 0 and stats["fallback"] > stats["zero"] > 0, stats
    # ... and the test tells the thesis-faithful reading from near misses
    assert abs(brute_loss(model, batch, pairs, class_mods, swap_gammas=True)[0] - total) > 1e-4
    assert abs(brute_loss(model, batch, pairs, class_mods, one_way=True)[0] - total) > 1e-4


def test_multilabel_loss_equals_brute_force() -> None:
    torch.manual_seed(5)
    model = CVS(DIMS, multilabel=True, **LOSS_KW).double()
    batch = loss_batch(missing=True, multilabel=True)
    out = model.loss(batch)
    total, l_c, l_t, stats = brute_loss(model, batch, LOSS_CASES["cvs"][3], list(MODS))
    assert abs(float(out["total"].detach()) - total) < 1e-10 and abs(float(out["triplet"]) - l_t) < 1e-10
    assert min(stats.values()) > 0, stats


def test_intra_weights_follow_the_pair_order() -> None:
    """Over unordered pairs in ``dims`` order, modality k of n has intra weight ``(n-1-k) gamma_1 + k gamma_2``
    (3 modalities: a 2 g1, b g1+g2, c 2 g2): with gamma_3 = 0 the triplet loss is exactly that sum. With
    gamma_1 = gamma_2 (the thesis's 0.25, 0.25) every modality gets the same weight."""
    torch.manual_seed(5)
    model = CVS(DIMS, **{**LOSS_KW, "gammas": (0.15, 0.35, 0.0)}).double()
    batch = loss_batch(missing=False)
    f, y = hand_vectors(model, batch), batch.labels.tolist()
    m1, m2, _ = model.config["margins"]
    stats = {"semihard": 0, "fallback": 0, "zero": 0, "positive": 0}
    want = (2 * 0.15 * brute_T(f["a"], f["a"], y, m1, True, stats)
            + 0.15 * brute_T(f["b"], f["b"], y, m1, True, stats) + 0.35 * brute_T(f["b"], f["b"], y, m2, True, stats)
            + 2 * 0.35 * brute_T(f["c"], f["c"], y, m2, True, stats))
    assert abs(float(model.loss(batch)["triplet"]) - want) < 1e-10


# ------------------------------------------------------------------------ 2. several blocks per modality
def identity_heads(model: CVS) -> None:
    """Heads ``relu(x I) I``: with positive features ``g_m = x_m`` exactly, so the inputs below are the g's."""
    with torch.no_grad():
        for head in model.heads.values():
            for layer in head:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.copy_(torch.eye(layer.out_features, layer.in_features, dtype=layer.weight.dtype))
                    layer.bias.zero_()


# per case: which (block, side) rescale each modality, written out by hand from the thesis / docs readings
COMBINE_CASES = {
    "cvs": (CVS, {}, {"a": [("a|b", "i"), ("a|c", "i")], "b": [("a|b", "s"), ("b|c", "i")],
                      "c": [("a|c", "s"), ("b|c", "s")]}),
    # stage 2's blocks a|c and b|c rescale c only (Sec. 3.2: adding c must not move a and b)
    "mcvs": (MCVS, {}, {"a": [("a|b", "i")], "b": [("a|b", "s")], "c": [("a|c", "s"), ("b|c", "s")]}),
    # one-stage RVS: the reference combines both blocks' alpha_ie (shared W_ie, Eq. 3.3.5)
    "rvs-one-stage": (RVS, {"stage_order": [["a", "b", "c"]]},
                      {"a": [("a|b", "i"), ("a|c", "i")], "b": [("a|b", "s")], "c": [("a|c", "s")]}),
    "rvs-staged": (RVS, {}, {"a": [("a|b", "i")], "b": [("a|b", "s")], "c": [("a|c", "s")]}),
}


@pytest.mark.parametrize("case", list(COMBINE_CASES))
def test_modality_output_is_the_mean_of_its_blocks(case: str) -> None:
    """Eq. 3.1.13 per block, combined as ``g_m' = g_m + mean_s(alpha_ms) g_m`` over the blocks whose partner is
    present (= the mean of the blocks' outputs); not a sum, not one block after the other."""
    cls, kw, ups = COMBINE_CASES[case]
    dims = {m: 3 for m in MODS}
    torch.manual_seed(2)
    model = cls(dims, n_classes=2, dim=3, hidden=(3,), attention_hidden=2, **kw).double()
    identity_heads(model)
    assert updates(model) == ups  # the generic helper used by the loss test agrees with the hand-written table
    x = [[[0.9, 0.2, 0.4], [0.3, 1.1, 0.5], [0.6, 0.1, 1.3]],   # every modality present
         [[0.5, 0.7, 0.2], [1.2, 0.4, 0.3], [0.0, 0.0, 0.0]],   # c missing
         [[0.8, 0.6, 0.1], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],   # a alone
         [[0.0, 0.0, 0.0], [0.2, 0.9, 0.7], [1.0, 0.3, 0.6]]]   # a missing
    mask = [[True, True, True], [True, True, False], [True, False, False], [False, True, True]]
    batch = Batch({m: torch.tensor([r[j] for r in x], dtype=torch.float64) for j, m in enumerate(MODS)},
                  torch.tensor(mask), MODS, torch.tensor([0, 1, 0, 1]))
    with torch.no_grad():
        f = model.encode(batch)
    col = {m: j for j, m in enumerate(MODS)}

    def w_out(key: str, side: str) -> list[Vec]:
        if cls is RVS:
            return rows(model.w_ie) if side == "i" else rows(model.blocks[key].w_se)
        return rows(model.blocks[key].w_e)

    checked_mean = 0
    for r in range(len(x)):
        for m in MODS:
            if not mask[r][col[m]]:
                continue
            g = x[r][col[m]]
            active = [(k, s) for k, s in ups[m] if all(mask[r][col[p]] for p in k.split("|"))]
            alphas = [hand_alpha(model.blocks[k], *(x[r][col[p]] for p in k.split("|")), w_out(k, s))
                      for k, s in active]
            want = list(g)
            if alphas:
                want = [gj + sum(a[j] for a in alphas) / len(alphas) * gj for j, gj in enumerate(g)]
            got = f[m][r].tolist()
            assert max(abs(p - q) for p, q in zip(got, normalise(want), strict=True)) < 1e-12, (r, m)
            if len(alphas) >= 2:
                checked_mean += 1
                # the same thing as the mean of the block modules' own outputs (Eq. 3.1.13 / 3.1.14, 3.3.5 / 3.3.6)
                outs = []
                for k, s in active:
                    g_i, g_s = (torch.tensor([x[r][col[p]]], dtype=torch.float64) for p in k.split("|"))
                    with torch.no_grad():
                        pair = model.blocks[k](g_i, g_s, w_ie=model.w_ie) if cls is RVS else model.blocks[k](g_i, g_s)
                    outs.append(pair[0 if s == "i" else 1][0].tolist())
                mean_out = [sum(o[j] for o in outs) / len(outs) for j in range(3)]
                assert max(abs(p - q) for p, q in zip(want, mean_out, strict=True)) < 1e-14
                # the readings we rejected give other vectors
                summed = [gj + sum(a[j] for a in alphas) * gj for j, gj in enumerate(g)]
                seq = list(g)
                for a in alphas:  # alpha from the raw g's, applied one block after the other
                    seq = [v + a[j] * v for j, v in enumerate(seq)]
                for other in (summed, seq):
                    assert max(abs(p - q) for p, q in zip(got, normalise(other), strict=True)) > 1e-4
    assert checked_mean == {"cvs": 3, "mcvs": 1, "rvs-one-stage": 1, "rvs-staged": 0}[case]


# ---------------------------------------------------------------------------- 3. strict vs paired encoding
def strict_paired_data(seed: int = 0) -> MultimodalDataset:
    g = np.random.default_rng(seed)
    n = 16
    mask = np.ones((n, 3), dtype=bool)
    mask[0:3, 1:] = False          # a alone
    mask[3:6, 2] = False           # a and b
    mask[6:8, 0] = False           # b and c
    mask[8, [0, 2]] = False        # b alone
    mask[9, :2] = False            # c alone
    feats = {m: g.normal(size=(n, d)).astype(np.float32) * mask[:, j:j + 1] for j, (m, d) in enumerate(DIMS.items())}
    return MultimodalDataset(feats, mask=mask, labels=np.arange(n) % 2, splits={"test": np.arange(n)})


def test_strict_encoding_is_the_head_alone_and_paired_uses_the_partners() -> None:
    """Strict (``encode_strict``: ``batch.only([m])``) gives ``f_m = normalize(head_m(x_m))`` for every sample and
    ignores the partners' features; paired (``encode_paired``, the thesis) rescales ``g_m`` by the blocks of the
    present partners. The two agree exactly on the samples without a partner and differ on all others."""
    data = strict_paired_data()
    idx = data.split("test")
    torch.manual_seed(0)
    model = CVS(DIMS, n_classes=2, dim=8, hidden=(16,))
    strict, paired = encode_strict(model, data, idx), encode_paired(model, data, idx)
    batch = data.batch(idx)
    hand = hand_vectors(copy.deepcopy(model).double(), Batch({m: v.double() for m, v in batch.features.items()},
                                                             batch.mask, batch.modalities, batch.labels))
    mask = data.mask[idx]
    with torch.no_grad():
        for j, m in enumerate(MODS):
            present = mask[:, j]
            alone = present & ~mask[:, [k for k in range(3) if k != j]].any(1)
            with_partner = present & ~alone
            assert alone.any() and with_partner.any()
            head = F.normalize(model.heads[m](batch.features[m]), dim=1)
            assert torch.equal(strict[m][present], head[present])
            assert torch.equal(paired[m][alone], strict[m][alone])
            gap = (paired[m] - strict[m]).norm(dim=1)
            assert bool((gap[with_partner] > 1e-4).all()), gap
            want = torch.tensor([v for v in hand[m] if v is not None], dtype=torch.float32)
            torch.testing.assert_close(paired[m][present], want, rtol=0, atol=1e-6)

    # change only b's features: strict a and c stay bit-for-bit, paired a and c move where b is present
    has_b = mask[:, 1]
    other = data.replace(features={**data.features, "b": (data.features["b"] * 1.7 + 0.3) * has_b[:, None]})
    strict2, paired2 = encode_strict(model, other, idx), encode_paired(model, other, idx)
    for j, m in ((0, "a"), (2, "c")):
        present = mask[:, j]
        assert torch.equal(strict2[m][present], strict[m][present])
        moved = (paired2[m] - paired[m]).norm(dim=1) > 1e-6
        assert torch.equal(moved[present], has_b[present])


def test_without_attention_strict_equals_paired() -> None:
    """``attention=False``: no block, so the two encodings are the same vectors."""
    data = strict_paired_data()
    idx = data.split("test")
    torch.manual_seed(0)
    model = CVS(DIMS, n_classes=2, dim=8, hidden=(16,), attention=False)
    strict, paired = encode_strict(model, data, idx), encode_paired(model, data, idx)
    for j, m in enumerate(MODS):
        present = data.mask[idx][:, j]
        assert torch.equal(strict[m][present], paired[m][present])
