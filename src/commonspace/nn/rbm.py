"""Restricted Boltzmann machines trained by (persistent) contrastive divergence written as a loss.

Three visible types, one hidden type (binary):

* ``"bernoulli"`` visible units ``v in {0, 1}`` (data in [0, 1] read as probabilities):
  ``E(v, h) = -a.v - b.h - h.W v``,  ``F(v) = -a.v - sum_j softplus(b_j + W_j v)``;
* ``"gaussian"`` visible units with fixed standard deviation ``sigma`` (1 for standardised data):
  ``E(v, h) = |v - a|^2 / (2 sigma^2) - b.h - h.W (v / sigma)``,
  ``F(v) = |v - a|^2 / (2 sigma^2) - sum_j softplus(b_j + W_j v / sigma)``;
* ``"softmax"``: the replicated softmax (Salakhutdinov & Hinton 2009, "Replicated softmax: an undirected topic
  model"; :class:`RBM` only) for bag-of-words counts ``v >= 0`` with document length ``D = sum_k v_k``: one
  softmax unit over the ``K`` words replicated ``D`` times with tied weights, and the hidden biases scaled by
  ``D`` so that documents of any length share one model: ``E(v, h) = -a.v - D b.h - h.W v``,
  ``F(v) = -a.v - sum_j softplus(D b_j + W_j v)``, ``p(h_j = 1 | v) = sigmoid(D b_j + W_j v)`` and
  ``v | h ~ Multinomial(D, softmax(a + W^T h))``, so ``E[v | h] = D softmax(a + W^T h)``. ``D`` is read off
  ``v`` wherever the hidden input is computed; counts may be real (e.g. topic proportions times a pseudo
  length). A Gibbs step draws ``round(D)`` words and rescales the counts to length ``D`` exactly (integer
  ``D``: exact multinomial sampling), so a negative sample keeps its chain's length and the ``D b`` term of the
  CD gradient compares like with like; a row with ``round(D) = 0`` (``D < 0.5``) takes the mean
  ``D softmax(.)`` instead.

``F(v) = -log sum_h exp(-E(v, h))``, so ``p(v) = exp(-F(v)) / Z`` (for the replicated softmax one ``Z_D`` per
document length: the model is conditional on ``D``). The gradient of ``-log p(v)`` is
``dF(v)/dtheta - E_model[dF/dtheta]``; contrastive divergence replaces the model expectation by the free
energy of a negative sample drawn by ``k`` Gibbs steps started at the data (CD-k) or at persistent chains
(PCD, Tieleman 2008, the SSL paper's ref. [15]). Hence the loss ``mean F(v_data) - mean F(v_neg)`` with the
negative sample detached has exactly the textbook CD gradient ``-(<v h>_data - <v h>_model)`` for ``W`` (with
``h`` replaced by its conditional mean ``p(h = 1 | v)``) and the matching bias statistics.

:class:`MultimodalRBM` is the SSL paper's MRBM (Sec. 3.1-3.2): two visible groups ``x``, ``y`` with weights
``W^x``, ``W^y``, biases ``b^x``, ``b^y`` and one shared hidden layer with bias ``b^h``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MultimodalRBM", "RBM", "RBM_VISIBLE_TYPES", "VISIBLE_TYPES"]

#: visible unit types accepted by :class:`MultimodalRBM` (and :class:`RBM`)
VISIBLE_TYPES = ("bernoulli", "gaussian")
#: visible unit types accepted by :class:`RBM`: also the replicated softmax for word counts
RBM_VISIBLE_TYPES = (*VISIBLE_TYPES, "softmax")


def _check_visible(kind: str, sigma: float, allowed: Sequence[str] = VISIBLE_TYPES) -> None:
    if kind not in allowed:
        hint = ("; a replicated-softmax group needs its own RBM (e.g. the first layer of an MDBN stack)"
                if kind == "softmax" else "")
        raise ValueError(f"visible={kind!r}; choose one of {list(allowed)}{hint}")
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")


# -------------------------------------------------------------------------- one visible group
def _scaled(v: Tensor, kind: str, sigma: float) -> Tensor:
    """What the hidden units see: ``v`` (Bernoulli, softmax) or ``v / sigma`` (Gaussian)."""
    return v / sigma if kind == "gaussian" else v


def _visible_energy(v: Tensor, bias: Tensor, kind: str, sigma: float) -> Tensor:
    """The visible-only part of ``E`` (and of ``F``), per sample: ``-a.v`` (Bernoulli, softmax) or
    ``|v - a|^2 / (2 sigma^2)``."""
    if kind == "gaussian":
        return (v - bias).pow(2).sum(1) / (2.0 * sigma * sigma)
    return -(v @ bias)


def _visible_mean(h: Tensor, weight: Tensor, bias: Tensor, kind: str, sigma: float,
                  length: Tensor | None = None) -> Tensor:
    """``E[v | h]``: ``sigmoid(a + W^T h)``, ``a + sigma W^T h`` or ``D softmax(a + W^T h)`` (``length`` = D, (B,);
    None: 1, the word distribution)."""
    act = h @ weight
    if kind == "gaussian":
        return bias + sigma * act
    if kind == "softmax":
        probs = torch.softmax(act + bias, dim=-1)
        return probs if length is None else probs * length.reshape(-1, 1).to(probs.dtype)
    return torch.sigmoid(act + bias)


def _visible_sample(mean: Tensor, kind: str, sigma: float, length: Tensor | None = None) -> Tensor:
    if kind == "gaussian":
        return mean + sigma * torch.randn_like(mean)
    if kind == "softmax":
        return _multinomial_counts(mean, mean.sum(1) if length is None else length.reshape(-1).to(mean.dtype))
    return torch.bernoulli(mean)


@torch.no_grad()
def _multinomial_counts(mean: Tensor, length: Tensor) -> Tensor:
    """Counts ``~ Multinomial(round(D), mean / D)`` per row (``D`` = ``length``), rescaled to length ``D``.

    Rows have different lengths, so every row draws ``max round(D)`` words and keeps its first ``round(D)``
    (``torch.multinomial`` with replacement: i.i.d. words). Rows with ``round(D) = 0`` return ``mean``.
    """
    n = torch.round(length).to(torch.long)
    n_max = int(n.max()) if n.numel() else 0
    if n_max == 0:
        return mean
    probs = mean / length.clamp_min(torch.finfo(mean.dtype).tiny).reshape(-1, 1)
    # a zero-length row has all-zero probabilities, which torch.multinomial refuses; its draws are discarded
    safe = torch.where((n > 0).reshape(-1, 1), probs, torch.ones_like(probs))
    words = torch.multinomial(safe, n_max, replacement=True)
    keep = (torch.arange(n_max, device=mean.device).reshape(1, -1) < n.reshape(-1, 1)).to(mean.dtype)
    counts = torch.zeros_like(mean).scatter_add_(1, words, keep)
    scale = length / n.clamp_min(1).to(mean.dtype)
    return torch.where((n > 0).reshape(-1, 1), counts * scale.reshape(-1, 1), mean)


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Mean over samples, or a weighted mean (weights 0/1 select rows) with an empty selection giving 0."""
    if weight is None:
        return values.mean()
    w = weight.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


class _Chains(nn.Module):
    """Persistent-chain buffers: saved in the state dict, so PCD survives save/load and trainer resume."""

    def _register_chains(self, n_chains: int, widths: Sequence[int]) -> None:
        self.n_chains = int(n_chains)
        if self.n_chains < 0:
            raise ValueError(f"n_chains must be >= 0, got {n_chains}")
        self._chain_names: tuple[str, ...] = ()
        if self.n_chains == 0:
            return
        names = ("chains",) if len(widths) == 1 else tuple(f"chains_{i}" for i in ("x", "y")[:len(widths)])
        for name, w in zip(names, widths, strict=True):
            self.register_buffer(name, torch.zeros(self.n_chains, int(w)))
        # 0 until the first batch seeds the chains; a tensor so that it is checkpointed with them
        self.register_buffer("chains_ready", torch.zeros((), dtype=torch.uint8))
        self._chain_names = names

    def get_chains(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, n) for n in self._chain_names)

    def _seed_chains(self, *data: Tensor) -> tuple[Tensor, ...]:
        """The stored chains; before the first training batch, data rows (cycled; no random draw).

        Seeding writes the buffers only in training mode, so an evaluation pass never changes the state.
        """
        if self.n_chains == 0:
            raise RuntimeError("this RBM was built with n_chains=0; build it with n_chains > 0 to use PCD")
        if bool(self.chains_ready):
            return self.get_chains()
        rows = torch.arange(self.n_chains, device=data[0].device) % data[0].shape[0]
        seeds = tuple(v.detach().index_select(0, rows) for v in data)
        if self.training:
            self._store_chains(*seeds)
            self.chains_ready.fill_(1)
        return seeds

    def _store_chains(self, *new: Tensor) -> None:
        with torch.no_grad():
            for name, v in zip(self._chain_names, new, strict=True):
                getattr(self, name).copy_(v)


# ------------------------------------------------------------------------------------ RBM
class RBM(_Chains):
    """One RBM with ``n_visible`` Bernoulli, Gaussian or replicated-softmax visible units and ``n_hidden`` binary
    hidden units.

    Parameters: ``weight`` (n_hidden x n_visible, the ``nn.Linear`` layout), ``v_bias`` (``a``), ``h_bias``
    (``b``). Weights start N(0, ``init_std``^2) and biases at zero (Hinton's practical guide). ``n_chains`` > 0
    registers persistent chains for :meth:`pcd_loss` (softmax chains keep the lengths of the data rows that
    seeded them).
    """

    def __init__(self, n_visible: int, n_hidden: int, visible: str = "bernoulli", sigma: float = 1.0,
                 n_chains: int = 0, init_std: float = 0.01) -> None:
        super().__init__()
        _check_visible(visible, sigma, RBM_VISIBLE_TYPES)
        if int(n_visible) < 1 or int(n_hidden) < 1:
            raise ValueError(f"n_visible and n_hidden must be positive, got {n_visible} and {n_hidden}")
        self.n_visible, self.n_hidden = int(n_visible), int(n_hidden)
        self.visible, self.sigma = visible, float(sigma)
        self.weight = nn.Parameter(torch.randn(self.n_hidden, self.n_visible) * float(init_std))
        self.v_bias = nn.Parameter(torch.zeros(self.n_visible))
        self.h_bias = nn.Parameter(torch.zeros(self.n_hidden))
        self._register_chains(n_chains, [self.n_visible])

    def extra_repr(self) -> str:
        return (f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, visible={self.visible!r}, "
                f"sigma={self.sigma}, n_chains={self.n_chains}")

    # ------------------------------------------------------------ conditionals
    def hidden_logits(self, v: Tensor) -> Tensor:
        """``b + W v'`` with ``v' = v`` or ``v / sigma``; ``D b + W v`` for the replicated softmax."""
        if self.visible == "softmax":
            return F.linear(v, self.weight) + v.sum(1, keepdim=True) * self.h_bias
        return F.linear(_scaled(v, self.visible, self.sigma), self.weight, self.h_bias)

    def hidden_prob(self, v: Tensor) -> Tensor:
        """``p(h = 1 | v) = sigmoid(hidden_logits(v))``."""
        return torch.sigmoid(self.hidden_logits(v))

    def sample_hidden(self, v: Tensor) -> Tensor:
        return torch.bernoulli(self.hidden_prob(v))

    def visible_mean(self, h: Tensor, length: Tensor | None = None) -> Tensor:
        """``E[v | h]``: ``sigmoid(a + W^T h)`` (Bernoulli), ``a + sigma W^T h`` (Gaussian) or
        ``D softmax(a + W^T h)`` (softmax; ``length`` = D per row, None: 1; ignored by the other types)."""
        return _visible_mean(h, self.weight, self.v_bias, self.visible, self.sigma, length)

    def sample_visible(self, h: Tensor, length: Tensor | None = None) -> Tensor:
        """A draw of ``v | h`` (softmax: ``round(D)`` words rescaled to length ``D``; module docstring)."""
        return _visible_sample(self.visible_mean(h, length), self.visible, self.sigma, length)

    def free_energy(self, v: Tensor) -> Tensor:
        """Per-sample ``F(v) = -log sum_h exp(-E(v, h))`` (module docstring)."""
        return _visible_energy(v, self.v_bias, self.visible, self.sigma) - F.softplus(self.hidden_logits(v)).sum(1)

    @torch.no_grad()
    def gibbs(self, v: Tensor, k: int = 1) -> Tensor:
        """``k`` steps v -> h -> v of block Gibbs sampling; returns the final visible sample (softmax: the
        document lengths of ``v`` are kept)."""
        length = v.sum(1) if self.visible == "softmax" else None
        for _ in range(int(k)):
            v = self.sample_visible(self.sample_hidden(v), length)
        return v

    # -------------------------------------------------------------- CD / PCD
    def cd_loss(self, v: Tensor, k: int = 1, chains: Tensor | None = None,
                weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(mean F(v) - mean F(v_neg), v_neg)``; ``v_neg`` = k Gibbs steps from ``chains`` (PCD) or ``v`` (CD).

        The negative sample carries no gradient, so ``-grad`` is the CD-k update. ``weight`` (B,) 0/1 restricts
        the positive phase to some rows (e.g. complete samples); return ``v_neg`` as the next chains.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        start = v.detach() if chains is None else chains.detach()
        neg = self.gibbs(start, k)
        # CD chains start at the data rows, so the row selection applies to the negative phase too
        neg_weight = weight if chains is None else None
        loss = _weighted_mean(self.free_energy(v), weight) - _weighted_mean(self.free_energy(neg), neg_weight)
        return loss, neg

    def pcd_loss(self, v: Tensor, k: int = 1, weight: Tensor | None = None) -> Tensor:
        """Persistent CD: the stored chains advance ``k`` Gibbs steps and become the negative sample."""
        (chains,) = self._seed_chains(v)
        loss, neg = self.cd_loss(v, k, chains, weight)
        if self.training:  # evaluation (validation loss) must not move the persistent state
            self._store_chains(neg)
        return loss


# ------------------------------------------------------------------------- multimodal RBM
class MultimodalRBM(_Chains):
    """The MRBM: visible groups ``x`` (``n_x``) and ``y`` (``n_y``), one shared binary hidden layer.

    ``E(x, y, h) = E_x(x) + E_y(y) - b^h.h - h.W^x x' - h.W^y y'`` (``E_x``, ``x'`` as for :class:`RBM` with
    the group's visible type), so ``p(h = 1 | x, y) = sigmoid(b^h + W^x x' + W^y y')`` and, given ``h``, ``x``
    and ``y`` are independent RBM visibles. Parameters ``weight_x`` (n_hidden x n_x), ``weight_y``, ``bias_x``,
    ``bias_y``, ``bias_h``. A missing group (presence flag 0) contributes nothing: neither its energy term nor
    its input to the hidden units. Groups are Bernoulli or Gaussian: a replicated softmax scales the hidden
    biases by its document length, which a hidden layer shared with another group has no single reading of.
    """

    def __init__(self, n_x: int, n_y: int, n_hidden: int, visible: Sequence[str] = ("bernoulli", "bernoulli"),
                 sigma: Sequence[float] = (1.0, 1.0), n_chains: int = 0, init_std: float = 0.01) -> None:
        super().__init__()
        if isinstance(visible, str):
            visible = (visible, visible)
        if len(visible) != 2 or len(sigma) != 2:
            raise ValueError(f"visible and sigma need one entry per group (x, y), got {visible} and {sigma}")
        for kind, s in zip(visible, sigma, strict=True):
            _check_visible(kind, s)
        if min(int(n_x), int(n_y), int(n_hidden)) < 1:
            raise ValueError(f"n_x, n_y and n_hidden must be positive, got {n_x}, {n_y}, {n_hidden}")
        self.n_x, self.n_y, self.n_hidden = int(n_x), int(n_y), int(n_hidden)
        self.visible = (str(visible[0]), str(visible[1]))
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.weight_x = nn.Parameter(torch.randn(self.n_hidden, self.n_x) * float(init_std))
        self.weight_y = nn.Parameter(torch.randn(self.n_hidden, self.n_y) * float(init_std))
        self.bias_x = nn.Parameter(torch.zeros(self.n_x))
        self.bias_y = nn.Parameter(torch.zeros(self.n_y))
        self.bias_h = nn.Parameter(torch.zeros(self.n_hidden))
        self._register_chains(n_chains, [self.n_x, self.n_y])

    def extra_repr(self) -> str:
        return (f"n_x={self.n_x}, n_y={self.n_y}, n_hidden={self.n_hidden}, visible={self.visible}, "
                f"sigma={self.sigma}, n_chains={self.n_chains}")

    def weights(self) -> list[nn.Parameter]:
        """``W^x``, ``W^y``: the only parameters the SSL regulariser moves (paper footnote 2)."""
        return [self.weight_x, self.weight_y]

    # ------------------------------------------------------------ conditionals
    def _input(self, v: Tensor, weight: Tensor, which: int, present: Tensor | None) -> Tensor:
        act = F.linear(_scaled(v, self.visible[which], self.sigma[which]), weight)
        if present is not None:
            act = act * present.reshape(-1, 1).to(act.dtype)
        return act

    def hidden_logits(self, x: Tensor, y: Tensor, px: Tensor | None = None, py: Tensor | None = None,
                      detach_bias: bool = False) -> Tensor:
        """``b^h + p_x W^x x' + p_y W^y y'`` with presence flags ``px``, ``py`` (B,) (None: present)."""
        bias = self.bias_h.detach() if detach_bias else self.bias_h
        return self._input(x, self.weight_x, 0, px) + self._input(y, self.weight_y, 1, py) + bias

    def hidden_prob(self, x: Tensor, y: Tensor, px: Tensor | None = None, py: Tensor | None = None) -> Tensor:
        """``p(h = 1 | x, y)``; a group with presence 0 adds nothing to the hidden input."""
        return torch.sigmoid(self.hidden_logits(x, y, px, py))

    def hidden_from(self, x: Tensor | None = None, y: Tensor | None = None, detach_bias: bool = False) -> Tensor:
        """Shared activations from the groups given: ``H^x = sigmoid(W^x x' + b^h)`` for ``x`` alone, ``H^y``
        for ``y`` alone, the joint ``p(h | x, y)`` for both (SSL Sec. 3.2). ``detach_bias`` keeps the gradient
        off ``b^h`` (the weights-only rule of the paper's footnote 2)."""
        if x is None and y is None:
            raise ValueError("hidden_from needs x, y or both")
        bias = self.bias_h.detach() if detach_bias else self.bias_h
        act = bias
        if x is not None:
            act = act + self._input(x, self.weight_x, 0, None)
        if y is not None:
            act = act + self._input(y, self.weight_y, 1, None)
        return torch.sigmoid(act)

    def infer(self, x: Tensor, y: Tensor, px: Tensor, py: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor]:
        """Mean-field inference of an absent group (Srivastava & Salakhutdinov's multimodal DBN/DBM).

        Rows with one group present clamp it and alternate ``h = p(h | present, filled)`` and
        ``filled = E[absent | h]``, ``steps`` rounds, starting from ``h = p(h | present)`` (the absent group
        adding nothing). Returns ``(h, x_filled, y_filled)``: complete rows and rows with neither group keep
        ``p(h | x, y)`` and their inputs; ``steps = 0`` gives the single-group activation ("drop input").
        """
        if int(steps) < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        px, py = px.to(torch.bool), py.to(torch.bool)
        h = self.hidden_prob(x, y, px, py)
        fill_x, fill_y = py & ~px, px & ~py
        if int(steps) == 0 or not bool((fill_x | fill_y).any()):
            return h, x, y
        qx, qy = px | fill_x, py | fill_y
        for _ in range(int(steps)):
            mx, my = self.visible_mean(h)
            x = torch.where(fill_x.reshape(-1, 1), mx, x)
            y = torch.where(fill_y.reshape(-1, 1), my, y)
            h = self.hidden_prob(x, y, qx, qy)
        return h, x, y

    def sample_hidden(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.bernoulli(self.hidden_prob(x, y))

    def visible_mean(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return (_visible_mean(h, self.weight_x, self.bias_x, self.visible[0], self.sigma[0]),
                _visible_mean(h, self.weight_y, self.bias_y, self.visible[1], self.sigma[1]))

    def sample_visible(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mx, my = self.visible_mean(h)
        return (_visible_sample(mx, self.visible[0], self.sigma[0]),
                _visible_sample(my, self.visible[1], self.sigma[1]))

    def free_energy(self, x: Tensor, y: Tensor, px: Tensor | None = None, py: Tensor | None = None) -> Tensor:
        """Per-sample joint ``F(x, y) = E_x(x) + E_y(y) - sum_j softplus(hidden logit_j)``; absent groups drop."""
        ex = _visible_energy(x, self.bias_x, self.visible[0], self.sigma[0])
        ey = _visible_energy(y, self.bias_y, self.visible[1], self.sigma[1])
        if px is not None:
            ex = ex * px.to(ex.dtype)
        if py is not None:
            ey = ey * py.to(ey.dtype)
        return ex + ey - F.softplus(self.hidden_logits(x, y, px, py)).sum(1)

    @torch.no_grad()
    def gibbs(self, x: Tensor, y: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """``k`` steps (x, y) -> h -> (x, y) of block Gibbs sampling over both groups."""
        for _ in range(int(k)):
            x, y = self.sample_visible(self.sample_hidden(x, y))
        return x, y

    # -------------------------------------------------------------- CD / PCD
    def cd_loss(self, x: Tensor, y: Tensor, k: int = 1, chains: tuple[Tensor, Tensor] | None = None,
                weight: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Joint CD-k (or PCD from ``chains``) over both groups: ``mean F(x, y) - mean F(x_neg, y_neg)``.

        ``weight`` (B,) 0/1 selects the rows of the positive phase (and, for CD, of the negative phase, whose
        chains start at those rows). Returns the loss and the negative sample (the next chains).
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if chains is None:
            nx, ny = self.gibbs(x.detach(), y.detach(), k)
            neg_weight = weight
        else:
            nx, ny = self.gibbs(chains[0].detach(), chains[1].detach(), k)
            neg_weight = None
        loss = _weighted_mean(self.free_energy(x, y), weight) - _weighted_mean(self.free_energy(nx, ny), neg_weight)
        return loss, (nx, ny)

    def pcd_loss(self, x: Tensor, y: Tensor, k: int = 1, weight: Tensor | None = None) -> Tensor:
        """Persistent CD over both groups with the stored chains (advanced only in training mode)."""
        chains = self._seed_chains(x, y)
        loss, neg = self.cd_loss(x, y, k, (chains[0], chains[1]), weight)
        if self.training:
            self._store_chains(*neg)
        return loss
