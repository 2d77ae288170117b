"""Multimodal VAE baselines of the IMA paper: MVAE (Wu & Goodman 2018) and JMVAE-KL (Suzuki et al. 2016).

Both use diagonal Gaussian posteriors, a standard normal prior, per-modality decoders with a Bernoulli (BCE)
or unit Gaussian (SSE) likelihood, and reparameterised samples drawn from torch's global RNG (the trainer
saves and restores it). Losses are per-sample negative ELBOs averaged over the batch (rows that do not take
part add zero), so data-parallel gradient averaging is exact. docs/methods.md (MVAE, JMVAE-KL) has the
equations and every choice the papers leave open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.models.base import MultimodalModel, per_modality, register
from commonspace.nn.mlp import ACTIVATIONS, MLP, flat_dim, masked_flat

__all__ = [
    "JMVAE",
    "KL_WARMUP_STEPS",
    "MVAE",
    "GaussianEncoder",
    "kl_normal",
    "kl_standard_normal",
    "product_of_experts",
    "reconstruction_loss",
    "reparameterise",
]

#: paper-agnostic training defaults: none of the three papers' settings are given in the IMA paper
_ADAM = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128}
_LIKELIHOODS = {"bernoulli": "bernoulli", "bce": "bernoulli", "gaussian": "gaussian", "sse": "gaussian"}
#: log-variances stay within +-20: exp(+-20) keeps precisions and their sums finite in float32
_LOGVAR_BOUND = 20.0
#: JMVAE-KL builds 2^M - 1 encoders; beyond this the model is impractical (1023 networks)
_MAX_JMVAE_MODALITIES = 10
#: default KL warm-up in optimisation steps (docs/methods.md, "KL weight"): both papers raise the KL weight
#: linearly from 0 to 1 over the first part of training; 300 steps is ~14 of the IMA bench's 50 epochs
#: (2670 pairs, batch 128), the length that ended MVAE's image-expert collapse there (benchmarks/vae_warmup.py)
KL_WARMUP_STEPS = 300


# ----------------------------------------------------------------------------------------- shared helpers
def layer_sizes(name: str, value: Any, modalities: Sequence[str]) -> dict[str, list[int]]:
    """Hidden layer sizes: one sequence (or int) for all modalities, or a {modality: sequence} mapping."""

    def seq(v: Any) -> list[int]:
        return [int(v)] if isinstance(v, int) else [int(s) for s in v]

    out = per_modality(name, value, modalities, cast=seq, lists=False)
    for m, sizes in out.items():
        if any(s < 1 for s in sizes):
            raise DataError(f"{name} for modality {m!r} has a non-positive layer size: {sizes}")
    return out


def likelihoods(value: Any, modalities: Sequence[str]) -> dict[str, str]:
    """``likelihood`` once or per modality; "bce"/"sse" are accepted as aliases of "bernoulli"/"gaussian"."""

    def norm(v: Any) -> str:
        if str(v).lower() not in _LIKELIHOODS:
            raise DataError(f"likelihood {v!r} is unknown; choose 'bernoulli' (BCE, data in [0, 1]) or "
                            "'gaussian' (SSE)")
        return _LIKELIHOODS[str(v).lower()]

    return per_modality("likelihood", value, modalities, cast=norm, lists=False)


def config_value(value: Any) -> Any:
    """Hyper-parameters as plain JSON-like values (tuples -> lists) for the checkpoint config."""
    if isinstance(value, Mapping):
        return {str(k): config_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [config_value(v) for v in value]
    return value


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise DataError(f"activation={activation!r}; choose one of {list(ACTIVATIONS)}")
    return activation


def check_bernoulli_range(model: MultimodalModel, data: MultimodalDataset, kinds: Mapping[str, str]) -> None:
    """Bernoulli (BCE) modalities need features in [0, 1]; fail before training otherwise."""
    for m, kind in kinds.items():
        if kind != "bernoulli":
            continue
        span = data.value_range(m)
        if span is not None and (span[0] < 0 or span[1] > 1):
            raise DataError(f"modality {m!r} uses likelihood='bernoulli' but its features span "
                            f"[{span[0]:.3g}, {span[1]:.3g}]; scale them to [0, 1] or use "
                            f"likelihood='gaussian' for it")


def reconstruction_loss(out: Tensor, target: Tensor, kind: str) -> Tensor:
    """Per-sample negative log-likelihood summed over features, shape ``out.shape[:-1]``.

    ``bernoulli``: ``out`` are logits, loss = BCE. ``gaussian``: ``out`` is the mean, loss = SSE, the unit
    variance Gaussian NLL up to a factor 2 and a constant (the IMA paper's "SSE objective").
    """
    if kind == "bernoulli":
        # BCE-with-logits does not broadcast its target
        return F.binary_cross_entropy_with_logits(out, target.expand_as(out), reduction="none").sum(-1)
    return (out - target).pow(2).sum(-1)


def output_mean(out: Tensor, kind: str) -> Tensor:
    """The decoder's mean ``E[x | z]``: sigmoid of the logits for Bernoulli, the output for Gaussian."""
    return torch.sigmoid(out) if kind == "bernoulli" else out


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag e^logvar) || N(0, I)) = 1/2 sum_k (e^logvar + mu^2 - 1 - logvar)``, summed over the last
    axis."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)


def kl_normal(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """``KL(N(mu_q, diag var_q) || N(mu_p, diag var_p))`` of diagonal Gaussians, summed over the last axis:
    ``1/2 sum_k (logvar_p - logvar_q + (var_q + (mu_q - mu_p)^2) / var_p - 1)``."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * (-logvar_p).exp() - 1.0).sum(-1)


def reparameterise(mu: Tensor, logvar: Tensor) -> Tensor:
    """``z = mu + sigma * eps``, ``eps ~ N(0, I)`` from torch's global RNG (saved/restored by the trainer)."""
    return mu + (0.5 * logvar).exp() * torch.randn_like(mu)


def product_of_experts(mu: Tensor, logvar: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Gaussian product of experts with a standard normal prior expert (Wu & Goodman 2018, Sec. 2).

    ``mu``, ``logvar``: (..., E, D) expert parameters; ``present``: bool (..., E), False experts are left out.
    With precisions ``T_e = exp(-logvar_e)`` and the prior's ``T_0 = 1``, ``mu_0 = 0``:
    ``var = 1 / (1 + sum_e p_e T_e)``, ``mean = var * sum_e p_e T_e mu_e``. Returns (mean, log-variance),
    each (..., D). With no expert present this is the prior N(0, I).
    """
    # where() rather than a product: an absent expert's (finite but meaningless) values must not reach the sum
    precision = torch.where(present.unsqueeze(-1), (-logvar).exp(), torch.zeros_like(logvar))
    total = 1.0 + precision.sum(-2)
    mean = (precision * mu).sum(-2) / total
    return mean, -total.log()


class GaussianEncoder(nn.Module):
    """``x -> h = MLP(x) -> (mu, logvar)`` with two linear heads; log-variances soft-bounded to (-20, 20)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], latent: int, activation: str) -> None:
        super().__init__()
        sizes = [int(in_dim), *[int(h) for h in hidden]]
        self.body: nn.Module = MLP(sizes, activation, activation) if len(sizes) > 1 else nn.Identity()
        self.mu = nn.Linear(sizes[-1], int(latent))
        self.logvar = nn.Linear(sizes[-1], int(latent))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        # a soft bound (20 tanh(v / 20), ~identity for |v| << 20) keeps the gradient that a hard clamp would kill
        return self.mu(h), _LOGVAR_BOUND * torch.tanh(self.logvar(h) / _LOGVAR_BOUND)


def _decoder(latent: int, hidden: Sequence[int], out_dim: int, activation: str) -> MLP:
    """The encoder's mirror ``latent -> reversed(hidden) -> out_dim`` with a linear output (logits or mean)."""
    return MLP([int(latent), *[int(h) for h in reversed(hidden)], int(out_dim)], activation, "linear")


class _VAEBase(MultimodalModel):
    """What MVAE and JMVAE-KL share: hyper-parameter checks, decoders, the KL weight schedule."""

    train_defaults = dict(_ADAM)

    def _setup(self, hidden: Any, latent: int, activation: str, likelihood: Any, beta: float,
               anneal_steps: int, method: str) -> None:
        if len(self.dims) < 2:
            raise DataError(f"{method} needs at least two modalities; got {list(self.dims)}")
        if int(latent) < 1:
            raise DataError(f"latent must be positive, got {latent}")
        if float(beta) < 0:
            raise DataError(f"beta must be >= 0, got {beta}")
        if int(anneal_steps) < 0:
            raise DataError(f"anneal_steps must be >= 0, got {anneal_steps}")
        check_activation(activation)
        self.hidden = layer_sizes("hidden", hidden, self.modalities)
        self.kinds = likelihoods(likelihood, self.modalities)
        self.latent = int(latent)
        self.beta = float(beta)
        self.anneal_steps = int(anneal_steps)
        self.sizes = {m: flat_dim(d) for m, d in self.dims.items()}
        self.decoders = nn.ModuleDict({m: _decoder(self.latent, self.hidden[m], self.sizes[m], activation)
                                       for m in self.modalities})
        # Training-mode loss() calls so far, for the KL warm-up; a buffer so checkpoints and resumes carry it.
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.int64))

    def _inputs(self, batch: Batch, mask: Tensor) -> dict[str, Tensor]:
        return {m: masked_flat(batch.features[m], mask[:, j]) for j, m in enumerate(self.modalities)}

    def kl_weight(self) -> float | Tensor:
        """The KL weight the next ``loss`` call uses, without advancing the warm-up.

        Training mode: ``beta_t = beta min(1, t / anneal_steps)`` with ``t`` the training-mode ``loss`` calls so
        far (the ``anneal_step`` buffer), i.e. the linear warm-up of Sonderby et al. (2016) that both papers
        use: 0 on the first step, ``beta`` from step ``anneal_steps`` on. Eval mode: always ``beta``, so
        validation losses are the full negative ELBO at every epoch and early stopping compares like with
        like. A tensor on the model's device while warming up (reading the step back would synchronise a GPU).
        """
        if not self.training or self.anneal_steps == 0:
            return self.beta
        step = self.anneal_step.to(torch.get_default_dtype())
        return self.beta * (step / self.anneal_steps).clamp(max=1.0)

    def _kl_weight(self) -> float | Tensor:
        """:meth:`kl_weight`, then one warm-up step on in training mode; ``loss`` calls it once per call.

        The step is a buffer, so checkpoints carry it and a resumed run continues the schedule where it was
        (the trainer calls ``loss`` once per batch for these models: they have no substeps).
        """
        weight = self.kl_weight()
        if self.training:
            self.anneal_step += 1
        return weight

    def check_data(self, data: MultimodalDataset) -> None:
        """Also: Bernoulli modalities need features in [0, 1]."""
        super().check_data(data)
        check_bernoulli_range(self, data, self.kinds)

    def _decode(self, z: Tensor, batch_size: int) -> dict[str, Tensor]:
        out = {}
        for m in self.modalities:
            x_hat = output_mean(self.decoders[m](z), self.kinds[m])
            out[m] = x_hat.reshape(batch_size, *self.dims[m])
        return out

    def reconstruct(self, batch: Batch) -> dict[str, Tensor]:
        """Every modality decoded (mean) from the ``embed`` mean; missing ones are thereby imputed."""
        return self._decode(self.embed(batch), len(batch))

    def translate(self, batch: Batch, target: str) -> Tensor:
        """``target`` decoded from the posterior mean of the other present modalities."""
        if target not in self.dims:
            raise DataError(f"unknown target modality {target!r}; this model has {list(self.modalities)}")
        others = [m for m in self.modalities if m != target]
        return self.reconstruct(batch.only(others))[target]


# ------------------------------------------------------------------------------------------------- MVAE
@register("mvae")
class MVAE(_VAEBase):
    """Multimodal VAE with a product-of-experts posterior and sub-sampled ELBO training (Wu & Goodman 2018).

    ``q(z | X_S) ∝ p(z) prod_{j in S} q(z | x_j)`` over the present modalities of ``S`` (PoE with a N(0, I)
    prior expert, :func:`product_of_experts`). Loss per sample (Wu & Goodman Eq. 4, sub-sampled):
    ``ELBO(X_present) + sum_j ELBO(x_j) + sum_{r<k} ELBO(X_{S_r})`` negated, where
    ``ELBO(X_S) = sum_{j in S} lambda_j log p(x_j | z) - beta KL(q(z | X_S) || p(z))``, ``z ~ q(z | X_S)``;
    each term reconstructs only its own (present) modalities. The joint term counts only for samples with
    two or more modalities (otherwise it repeats a unimodal term); a random subset ``S_r`` (size 2..M-1, drawn
    per batch) counts for the samples that have all of its modalities.

    Hyper-parameters: ``latent`` (50), ``hidden`` ((500, 500), or {modality: sizes}), ``activation`` ("relu"),
    ``likelihood`` ("gaussian" = SSE, or "bernoulli" = BCE on [0, 1] data; once or per modality),
    ``rec_weight`` (1.0, lambda_j, once or per modality), ``beta`` (1.0), ``anneal_steps``
    (:data:`KL_WARMUP_STEPS` = 300 training steps of linear KL warm-up, Wu & Goodman's annealing factor; 0 = none),
    ``subsets`` (1: k random subsets; none exist for M = 2).
    Loss terms: ``total``, ``elbo_joint``, ``elbo_<m>``, ``elbo_random`` (M >= 3 and k > 0), ``rec_<m>`` and
    ``kl`` (summed over all ELBO terms and unweighted, so ``total = sum_m lambda_m rec_m + beta_t kl`` with
    ``beta_t`` = :meth:`kl_weight`).
    """

    requires_complete = False

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], latent: int = 50,
                 hidden: Sequence[int] | Mapping[str, Sequence[int]] = (500, 500), activation: str = "relu",
                 likelihood: str | Mapping[str, str] = "gaussian", rec_weight: float | Mapping[str, float] = 1.0,
                 beta: float = 1.0, anneal_steps: int = KL_WARMUP_STEPS, subsets: int = 1) -> None:
        super().__init__(dims)
        self._setup(hidden, latent, activation, likelihood, beta, anneal_steps, "MVAE")
        if int(subsets) < 0:
            raise DataError(f"subsets must be >= 0, got {subsets}")
        self.rec_weight = per_modality("rec_weight", rec_weight, self.modalities, lists=False)
        self.subsets = int(subsets)
        self.save_config(latent=self.latent, hidden=config_value(hidden), activation=activation,
                         likelihood=config_value(likelihood), rec_weight=config_value(rec_weight),
                         beta=self.beta, anneal_steps=self.anneal_steps, subsets=self.subsets)
        self.encoders = nn.ModuleDict({m: GaussianEncoder(self.sizes[m], self.hidden[m], self.latent, activation)
                                       for m in self.modalities})

    # ------------------------------------------------------------------ posterior
    def experts(self, batch: Batch, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Each modality's expert ``q(z | x_j)``: (B, M, D) means and log-variances (absent rows meaningless)."""
        mask = self.presence_mask(batch) if mask is None else mask
        xs = self._inputs(batch, mask)
        outs = [self.encoders[m](xs[m]) for m in self.modalities]
        return torch.stack([o[0] for o in outs], 1), torch.stack([o[1] for o in outs], 1)

    def posterior(self, batch: Batch, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """PoE posterior ``q(z | present modalities)``: (B, D) mean and log-variance."""
        mask = self.presence_mask(batch) if mask is None else mask
        mu, logvar = self.experts(batch, mask)
        return product_of_experts(mu, logvar, mask)

    def embed(self, batch: Batch) -> Tensor:
        """The PoE posterior mean from the present modalities (the prior mean 0 when none is present)."""
        return self.posterior(batch)[0]

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Per modality, the mean of ``p(z) q(z | x_j)`` (that expert with the prior alone)."""
        mu, logvar = self.experts(batch)
        alone = torch.ones(mu.shape[0], 1, dtype=torch.bool, device=mu.device)
        return {m: product_of_experts(mu[:, j:j + 1], logvar[:, j:j + 1], alone)[0]
                for j, m in enumerate(self.modalities)}

    # ----------------------------------------------------------------------- loss
    def _term_subsets(self, device: torch.device) -> tuple[list[str], Tensor]:
        """Names and (T, M) bool membership of this batch's ELBO terms: joint, singles, k random subsets."""
        n = len(self.modalities)
        names = ["joint", *self.modalities]
        rows = [torch.ones(n, dtype=torch.bool), *torch.eye(n, dtype=torch.bool)]
        middle = 2 ** n - 2 - n  # subsets of size 2..M-1
        if self.subsets and middle > 0:
            # Uniform over the subsets of size 2..M-1 (those not already a joint or unimodal term): draw
            # codes in [1, 2^M - 1) until enough have 2..M-1 members; a handful of draws suffices.
            codes = torch.empty(0, dtype=torch.int64)
            while codes.numel() < self.subsets:
                c = torch.randint(1, 2 ** n - 1, (4 * self.subsets + 8,))
                bits = (c.unsqueeze(1) >> torch.arange(n)) & 1
                codes = torch.cat([codes, c[bits.sum(1) >= 2]])
            bits = ((codes[:self.subsets].unsqueeze(1) >> torch.arange(n)) & 1).bool()
            names += ["random"] * self.subsets
            rows += list(bits)
        return names, torch.stack(rows).to(device)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """Negative sub-sampled ELBO (Wu & Goodman Eq. 4), per sample summed over terms, mean over the batch."""
        mask = self.presence_mask(batch)
        b = mask.shape[0]
        xs = self._inputs(batch, mask)
        mu_e, logvar_e = self.experts(batch, mask)
        names, member = self._term_subsets(mask.device)
        t = member.shape[0]
        # (T, B, M): expert j takes part in term t for sample i iff j is in the term's subset and present.
        use = member.unsqueeze(1) & mask.unsqueeze(0)
        counts = torch.stack([mask.sum(1) >= 2, *mask.T], 0)  # joint: >= 2 present; single j: j present
        if t > counts.shape[0]:
            # a random subset counts where all of its modalities are present (S within the present set)
            extra = member[counts.shape[0]:].unsqueeze(1)
            counts = torch.cat([counts, (~extra | mask.unsqueeze(0)).all(2)], 0)
        w = counts.to(mu_e.dtype)  # (T, B): which samples each term counts for
        mu, logvar = product_of_experts(mu_e.unsqueeze(0), logvar_e.unsqueeze(0), use)  # (T, B, D)
        z = reparameterise(mu, logvar)
        kl_w = self._kl_weight()
        kl = kl_standard_normal(mu, logvar) * w  # (T, B)
        per_term = kl_w * kl
        out: dict[str, Tensor] = {}
        for j, m in enumerate(self.modalities):
            # One decoder pass over all terms at once; only terms whose subset holds a present m reconstruct it.
            rec = reconstruction_loss(self.decoders[m](z.reshape(t * b, -1)).reshape(t, b, -1),
                                      xs[m].unsqueeze(0), self.kinds[m])
            rec = rec * use[:, :, j].to(rec.dtype) * w
            out[f"rec_{m}"] = rec.sum() / b
            per_term = per_term + self.rec_weight[m] * rec
        term_loss = per_term.sum(1) / b  # (T,)
        out["elbo_joint"] = term_loss[0]
        for j, m in enumerate(self.modalities):
            out[f"elbo_{m}"] = term_loss[1 + j]
        if len(names) > 1 + len(self.modalities):
            out["elbo_random"] = term_loss[1 + len(self.modalities):].sum()
        out["kl"] = kl.sum() / b
        out["total"] = term_loss.sum()
        return out


# ----------------------------------------------------------------------------------------------- JMVAE-KL
@register("jmvae")
class JMVAE(_VAEBase):
    """JMVAE-KL (Suzuki, Nakayama & Matsuo 2016, Sec. 3.2 generalised to M modalities).

    A joint encoder ``q(z | x_1..x_M)`` and one encoder ``q(z | X_S)`` per non-empty proper subset ``S``:
    ``2^M - 1`` inference networks in all (:attr:`n_inference_networks`); one decoder per modality. Loss per
    complete sample, with ``z ~ q(z | X)``:
    ``-sum_m log p(x_m | z) + beta KL(q(z | X) || p(z)) + alpha sum_S KL(q(z | X) || q(z | X_S))``.
    ``embed`` uses, per sample, the network of exactly its present modalities (grouped by mask pattern).

    Hyper-parameters: ``latent`` (50), ``hidden`` ((500, 500), or {modality: sizes}; a subset network's layers
    are the element-wise sums of its modalities' sizes), ``activation`` ("relu"), ``likelihood``
    ("gaussian" | "bernoulli", once or per modality), ``alpha`` (0.1), ``beta`` (1.0), ``anneal_steps``
    (:data:`KL_WARMUP_STEPS` = 300 training steps of linear warm-up of the prior KL, Suzuki et al.'s warm-up;
    0 = none).
    Loss terms: ``total``, ``elbo_joint`` (rec + beta_t KL), ``rec_<m>``, ``kl`` (to the prior), ``kl_<a+b>`` per
    proper subset (unweighted), ``kl_subsets`` (their sum; ``total = elbo_joint + alpha kl_subsets``).
    """

    requires_complete = True

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], latent: int = 50,
                 hidden: Sequence[int] | Mapping[str, Sequence[int]] = (500, 500), activation: str = "relu",
                 likelihood: str | Mapping[str, str] = "gaussian", alpha: float = 0.1, beta: float = 1.0,
                 anneal_steps: int = KL_WARMUP_STEPS) -> None:
        super().__init__(dims)
        if len(self.dims) > _MAX_JMVAE_MODALITIES:
            raise DataError(f"JMVAE-KL needs 2^M - 1 encoders; {len(self.dims)} modalities would need "
                            f"{2 ** len(self.dims) - 1}. Use at most {_MAX_JMVAE_MODALITIES} modalities or MVAE")
        self._setup(hidden, latent, activation, likelihood, beta, anneal_steps, "JMVAE-KL")
        if float(alpha) < 0:
            raise DataError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.save_config(latent=self.latent, hidden=config_value(hidden), activation=activation,
                         likelihood=config_value(likelihood), alpha=self.alpha, beta=self.beta,
                         anneal_steps=self.anneal_steps)
        n = len(self.modalities)
        #: subset code c (bit j = modality j) -> ModuleDict key; code 2^M - 1 is the joint encoder
        self.subset_keys: dict[int, str] = {}
        networks = {}
        for code in range(1, 2 ** n):
            members = self.members(code)
            key = "+".join(members)
            depth = {len(self.hidden[m]) for m in members}
            if len(depth) > 1:
                raise DataError(f"JMVAE-KL sums the hidden sizes of a subset's modalities, so every modality "
                                f"needs the same number of hidden layers; got {self.hidden}")
            sizes = [sum(layer) for layer in zip(*(self.hidden[m] for m in members), strict=True)]
            networks[key] = GaussianEncoder(sum(self.sizes[m] for m in members), sizes, self.latent, activation)
            self.subset_keys[code] = key
        self.networks = nn.ModuleDict(networks)
        self.full_code = 2 ** n - 1

    @property
    def n_inference_networks(self) -> int:
        """``2^M - 1``: the joint encoder plus one per non-empty proper subset of modalities."""
        return len(self.networks)

    def members(self, code: int) -> list[str]:
        """Modalities of a subset code (bit j set = ``modalities[j]`` in the subset)."""
        return [m for j, m in enumerate(self.modalities) if code >> j & 1]

    def subset_posterior(self, code: int, xs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``q(z | X_S)`` of the subset ``code`` on (masked, flattened) inputs ``xs``."""
        members = self.members(code)
        return self.networks[self.subset_keys[code]](torch.cat([xs[m] for m in members], 1))

    def posterior(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Per sample, ``q(z | X_present)`` from the network of exactly its present modalities: (B, D) mean
        and log-variance; prior N(0, I) for samples with no modality. One pass per distinct mask pattern."""
        mask = self.presence_mask(batch)
        xs = self._inputs(batch, mask)
        codes = (mask.to(torch.int64) << torch.arange(mask.shape[1], device=mask.device)).sum(1)
        mu = xs[self.modalities[0]].new_zeros(mask.shape[0], self.latent)
        logvar = torch.zeros_like(mu)
        for code in torch.unique(codes).tolist():
            if code == 0:
                continue
            rows = torch.nonzero(codes == code).flatten()
            m_s, lv_s = self.subset_posterior(code, {m: x.index_select(0, rows) for m, x in xs.items()})
            mu = mu.index_copy(0, rows, m_s)
            logvar = logvar.index_copy(0, rows, lv_s)
        return mu, logvar

    def embed(self, batch: Batch) -> Tensor:
        """The posterior mean from the network matching each sample's present modalities."""
        return self.posterior(batch)[0]

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Per modality, the mean of its unimodal network ``q(z | x_m)``."""
        xs = self._inputs(batch, self.presence_mask(batch))
        return {m: self.subset_posterior(1 << j, xs)[0] for j, m in enumerate(self.modalities)}

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """JMVAE-KL objective (Suzuki et al. Eq. 5 for M modalities) over complete samples, mean over the batch."""
        mask = self.presence_mask(batch)
        b = mask.shape[0]
        xs = self._inputs(batch, mask)
        mu, logvar = self.subset_posterior(self.full_code, xs)
        w = mask.all(1).to(mu.dtype)  # the trainer passes complete rows only; incomplete ones would add zero
        z = reparameterise(mu, logvar)
        kl_w = self._kl_weight()
        out: dict[str, Tensor] = {}
        per_sample = kl_w * kl_standard_normal(mu, logvar) * w
        out["kl"] = (kl_standard_normal(mu, logvar) * w).sum() / b
        for m in self.modalities:
            rec = reconstruction_loss(self.decoders[m](z), xs[m], self.kinds[m]) * w
            out[f"rec_{m}"] = rec.sum() / b
            per_sample = per_sample + rec
        out["elbo_joint"] = per_sample.sum() / b
        kl_sub = torch.zeros_like(per_sample)
        for code in range(1, self.full_code):
            m_s, lv_s = self.subset_posterior(code, xs)
            kl = kl_normal(mu, logvar, m_s, lv_s) * w
            out[f"kl_{self.subset_keys[code]}"] = kl.sum() / b
            kl_sub = kl_sub + kl
        out["kl_subsets"] = kl_sub.sum() / b
        out["total"] = out["elbo_joint"] + self.alpha * out["kl_subsets"]
        return out

