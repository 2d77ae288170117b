"""The modal-aware operation of modal-aware multimodal hashing (paper Sec. "Kernel network", "Attention
network", Figs. 3-5): a kernel network (KN) that lets an image feature map and a text feature vector reweigh each
other through dot-product kernel similarities, then an attention network (AN) that computes channel / feature
attention maps from both modalities' pooled features.

The paper's equations were lost in extraction; docs/methods_hashing.md gives the reading implemented here:

KN (non-local style, embedded-Gaussian kernel of Wang et al. [43]), image ``X`` (B, C, H, W) with positions
``x_i`` (N = HW of them), text ``t`` (B, D), common width ``C'``::

    K_i   = softmax_i( theta(x_i) . phi(t) )                  (kernel weights over positions, sum_i K_i = 1)
    y_i   = x_i + p_t * W_z( N K_i g(x_i) )                   (image positions reweighed by the kernel)
    t'    = t   + p_v * W_u( sum_i K_i g(x_i) )               (text += kernel-weighted pooled image feature)

AN (squeeze-and-excitation over both modalities, gates centred on 1)::

    s     = [GAP(Y); t']                                      (C + D)
    h     = ReLU(W_1 s + b_1)
    a_v   = 2 sigmoid(W_v h + b_v)  (C,)   a_t = 2 sigmoid(W_t h + b_t)  (D,)    in (0, 2)
    Y''   = a_v * Y  (per channel),  t'' = a_t * t'

``W_v, W_t, b_v, b_t`` start at zero, so every gate starts at exactly 1 and AN at the identity (ours: with a plain
sigmoid two stacked AN halve every feature at initialisation and the full model collapsed, issue 13); a gate
can still suppress a channel (towards 0) or amplify it (towards 2).

``p_v``, ``p_t`` are the presence bits: a missing modality gives nothing to the other, and its own outputs are
zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["AttentionNetwork", "InertKernelWarning", "KernelNetwork", "ModalAwareBlock", "kernel_is_inert"]


class InertKernelWarning(UserWarning):
    """KN was asked to act on 1 x 1 maps, where its kernel is constant (see :func:`kernel_is_inert`)."""


def kernel_is_inert(height: int, width: int) -> bool:
    """True when KN's kernel cannot act on an ``height x width`` map: with one position the softmax is exactly 1,
    ``theta`` and ``phi`` get no gradient, and KN reduces to ``y = x + W_z g(x)``, ``t' = t + W_u g(x)``."""
    return int(height) * int(width) <= 1


def _presence(p: Tensor | None, like: Tensor) -> Tensor:
    """(B,) presence as a float column broadcastable to ``like``'s rows (all ones when ``p`` is None)."""
    if p is None:
        return like.new_ones(like.shape[0])
    return p.to(like.dtype).reshape(-1)


def _rows(p: Tensor, x: Tensor) -> Tensor:
    return p.reshape(-1, *[1] * (x.ndim - 1))


class KernelNetwork(nn.Module):
    """KN (paper Fig. 3): dot-product kernel between image positions and the text feature, used to reweigh both.

    ``theta``, ``g``: 1x1 convolutions C -> C'; ``phi``: linear D -> C'; ``W_z``: 1x1 convolution C' -> C and
    ``W_u``: linear C' -> D, both zero-initialised so the block starts as the identity (non-local [43]).
    """

    def __init__(self, image_channels: int, text_dim: int, width: int | None = None) -> None:
        super().__init__()
        c, d = int(image_channels), int(text_dim)
        # non-local's default: half the image channels
        w = int(width) if width else max(c // 2, 1)
        self.width = w
        self.theta = nn.Conv2d(c, w, 1)
        self.g = nn.Conv2d(c, w, 1)
        self.phi = nn.Linear(d, w)
        self.w_z = nn.Conv2d(w, c, 1)
        self.w_u = nn.Linear(w, d)
        for layer in (self.w_z, self.w_u):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def kernel(self, x: Tensor, t: Tensor) -> Tensor:
        """``K`` (B, N): softmax over the N = H W positions of ``theta(x_i) . phi(t)``; rows sum to 1."""
        q = self.theta(x).flatten(2)  # (B, C', N)
        k = self.phi(t).unsqueeze(1)  # (B, 1, C')
        return torch.softmax(torch.bmm(k, q).squeeze(1), dim=1)

    def forward(self, x: Tensor, t: Tensor, p_v: Tensor | None = None,
                p_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(Y, t')`` of the module docstring; ``p_v``/``p_t`` (B,) presence bits gate the cross-modal terms."""
        b, _, h, w = x.shape
        pv, pt = _presence(p_v, x), _presence(p_t, x)
        kern = self.kernel(x, t)  # (B, N)
        gx = self.g(x).flatten(2)  # (B, C', N)
        # N K_i: a flat kernel (K_i = 1/N) leaves g's scale unchanged whatever the map size
        reweighed = (gx * (kern * (h * w)).unsqueeze(1)).reshape(b, -1, h, w)
        y = x + _rows(pt, x) * self.w_z(reweighed)
        pooled = torch.bmm(gx, kern.unsqueeze(2)).squeeze(2)  # sum_i K_i g(x_i): kernel-weighted GAP
        t_new = t + _rows(pv, t) * self.w_u(pooled)
        return y * _rows(pv, y), t_new * _rows(pt, t_new)


class AttentionNetwork(nn.Module):
    """AN (paper Fig. 4): GAP of the image map and the text vector, concatenated, ``fc-ReLU-fc-2 sigmoid`` into a
    channel attention map for the image and a feature attention map for the text, both starting at exactly 1."""

    def __init__(self, image_channels: int, text_dim: int, reduction: int = 16) -> None:
        super().__init__()
        c, d = int(image_channels), int(text_dim)
        hidden = max((c + d) // max(int(reduction), 1), 4)
        self.image_channels, self.text_dim = c, d
        self.squeeze = nn.Linear(c + d, hidden)
        self.excite = nn.Linear(hidden, c + d)  # = [W_v; W_t] stacked
        nn.init.zeros_(self.excite.weight)
        nn.init.zeros_(self.excite.bias)

    def attention(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a_v (B, C), a_t (B, D))`` in (0, 2), both computed from both modalities (1 at initialisation)."""
        s = torch.cat([x.mean(dim=(2, 3)), t], dim=1)
        a = 2 * torch.sigmoid(self.excite(torch.relu(self.squeeze(s))))
        return a[:, :self.image_channels], a[:, self.image_channels:]

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        a_v, a_t = self.attention(x, t)
        return x * a_v[:, :, None, None], t * a_t


class ModalAwareBlock(nn.Module):
    """The modal-aware operation: KN then AN (paper Fig. 5; the w/o-KN ablation feeds the features straight to AN).

    ``use_kn=False`` / ``use_an=False`` do not create that part's parameters (ablations "w/o KN", "w/o AN");
    with both off the block is the identity.
    """

    def __init__(self, image_channels: int, text_dim: int, use_kn: bool = True, use_an: bool = True,
                 kernel_width: int | None = None, reduction: int = 16) -> None:
        super().__init__()
        self.kn = KernelNetwork(image_channels, text_dim, kernel_width) if use_kn else None
        self.an = AttentionNetwork(image_channels, text_dim, reduction) if use_an else None

    def forward(self, x: Tensor, t: Tensor, p_v: Tensor | None = None,
                p_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Image map (B, C, H, W) and text (B, D) in, the same shapes out; missing rows stay zero."""
        if self.kn is not None:
            x, t = self.kn(x, t, p_v, p_t)
        if self.an is not None:
            x, t = self.an(x, t)
            # the gates of a zero row are not zero, but the product is: rows stay zero, no mask needed
        return x, t
