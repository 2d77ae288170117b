"""Aligned attention blocks of the CVS / M-CVS / RVS thesis (Eq. 3.1.11-3.1.14 and 3.3.1-3.3.6).

Row-vector convention, as in the equations' ``g_i W_i``: ``g`` is (B, dim), ``W_i``, ``W_s``, ``W_is`` are
(dim, hidden) and the output matrix ``W_e`` is stored (hidden, dim), so ``e = tanh(.) @ W_e`` is the thesis's
``W_e tanh(.)`` for row vectors. The equations have no bias, so neither do the blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from commonspace.data.dataset import DataError

__all__ = ["AlignedAttention", "ReferenceAttention", "attention_gate"]


def _matrix(rows: int, cols: int) -> nn.Parameter:
    w = torch.empty(rows, cols)
    nn.init.xavier_uniform_(w)
    return nn.Parameter(w)


def attention_gate(pre: Tensor, w_e: Tensor) -> Tensor:
    """``alpha = softmax(W_e tanh(pre))`` over the embedding dimensions (Eq. 3.1.11 outer part, 3.1.12)."""
    return torch.softmax(torch.tanh(pre) @ w_e, dim=-1)


def _keep_where(both: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    """``new`` for samples with both modalities present, ``old`` (bit-for-bit) elsewhere."""
    if both is None:
        return new
    return torch.where(both.reshape(-1, 1), new, old)


class AlignedAttention(nn.Module):
    """One block for a pair of modalities (i, s), Eq. 3.1.11-3.1.14.

    ``e = W_e tanh(g_i W_i + g_s W_s + (g_i * g_s) W_is)`` (``*`` elementwise: the thesis's ``g_is`` is "the
    element-wise product of g_i and g_s"), ``alpha = softmax(e)`` over the ``dim`` embedding dimensions, and the
    residual outputs ``g_i + alpha * g_i``, ``g_s + alpha * g_s``. ``use_wi`` / ``use_ws`` / ``use_wis`` = False
    drop a term of the tanh argument and do not create its matrix (the ablation of Figure 25).
    """

    def __init__(self, dim: int, hidden: int | None = None, use_wi: bool = True, use_ws: bool = True,
                 use_wis: bool = True, output: bool = True) -> None:
        super().__init__()
        if not (use_wi or use_ws or use_wis):
            raise DataError("an attention block needs at least one of use_wi, use_ws, use_wis")
        self.dim = int(dim)
        self.hidden = int(hidden) if hidden is not None else self.dim
        if self.dim < 1 or self.hidden < 1:
            raise DataError(f"attention sizes must be positive, got dim={dim}, hidden={hidden}")
        self.use_wi, self.use_ws, self.use_wis = bool(use_wi), bool(use_ws), bool(use_wis)
        # dropped matrices are never created, so they are absent from parameters() and the state dict
        if self.use_wi:
            self.w_i = _matrix(self.dim, self.hidden)
        if self.use_ws:
            self.w_s = _matrix(self.dim, self.hidden)
        if self.use_wis:
            self.w_is = _matrix(self.dim, self.hidden)
        if output:  # the RVS block replaces W_e by W_ie / W_se
            self.w_e = _matrix(self.hidden, self.dim)

    def pre(self, g_i: Tensor, g_s: Tensor) -> Tensor:
        """The tanh argument ``g_i W_i + g_s W_s + (g_i * g_s) W_is`` of Eq. 3.1.11 (enabled terms only)."""
        terms = []
        if self.use_wi:
            terms.append(g_i @ self.w_i)
        if self.use_ws:
            terms.append(g_s @ self.w_s)
        if self.use_wis:
            terms.append((g_i * g_s) @ self.w_is)
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out

    def alpha(self, g_i: Tensor, g_s: Tensor) -> Tensor:
        """Attention weights ``alpha_is`` (B, dim), Eq. 3.1.11-3.1.12; each row sums to one."""
        return attention_gate(self.pre(g_i, g_s), self.w_e)

    def forward(self, g_i: Tensor, g_s: Tensor, both: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(g_i + alpha g_i, g_s + alpha g_s)`` (Eq. 3.1.13-3.1.14); rows where ``both`` is False unchanged."""
        a = self.alpha(g_i, g_s)
        return _keep_where(both, g_i + a * g_i, g_i), _keep_where(both, g_s + a * g_s, g_s)


class ReferenceAttention(AlignedAttention):
    """The RVS block between the reference modality i and a modality s, Eq. 3.3.1-3.3.6.

    The same tanh argument as :class:`AlignedAttention`, but ``W_e`` is split: the block owns ``W_se`` (new for
    every added modality) while ``W_ie``, the reference's output matrix, is shared by all RVS blocks and frozen
    after the first stage, so the model owns it and passes it in. ``alpha_ie = softmax(W_ie tanh(.))`` updates
    the reference (3.3.5), ``alpha_se = softmax(W_se tanh(.))`` updates s (3.3.6).
    """

    def __init__(self, dim: int, hidden: int | None = None, use_wi: bool = True, use_ws: bool = True,
                 use_wis: bool = True) -> None:
        super().__init__(dim, hidden, use_wi, use_ws, use_wis, output=False)
        self.w_se = _matrix(self.hidden, self.dim)

    def alphas(self, g_i: Tensor, g_s: Tensor, w_ie: Tensor | None) -> tuple[Tensor | None, Tensor]:
        """``(alpha_ie, alpha_se)`` (Eq. 3.3.1-3.3.4); ``alpha_ie`` is None when ``w_ie`` is None."""
        h = self.pre(g_i, g_s)
        return (None if w_ie is None else attention_gate(h, w_ie)), attention_gate(h, self.w_se)

    def forward(self, g_i: Tensor, g_s: Tensor, both: Tensor | None = None,  # type: ignore[override]
                w_ie: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Eq. 3.3.5-3.3.6; with ``w_ie=None`` the reference passes through unchanged (a block added later)."""
        a_ie, a_se = self.alphas(g_i, g_s, w_ie)
        out_i = g_i if a_ie is None else _keep_where(both, g_i + a_ie * g_i, g_i)
        return out_i, _keep_where(both, g_s + a_se * g_s, g_s)
