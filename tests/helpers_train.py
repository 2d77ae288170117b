"""Tiny models and a training entry point for the trainer / checkpoint / resume / DDP tests.

Importable (``from helpers_train import ...``) and runnable as a script (also under torchrun):
``python tests/helpers_train.py --out DIR --epochs 4 [--stop-after 2] [--save final.safetensors] [--folder F]``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from commonspace.data.dataset import Batch, MultimodalDataset
from commonspace.models.base import MultimodalModel, Stage, register
from commonspace.train import TrainConfig, Trainer
from commonspace.train.checkpoint import state_for_saving


class ToySubsteps(MultimodalModel):
    """Base of the two-substep toys: loss terms "a" and "b" stepped one after the other per batch."""

    def substeps(self):
        return ("a", "b")

    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {}

    def embed(self, batch: Batch) -> torch.Tensor:
        return batch.features["x"]


def fit_or_interrupt(model: MultimodalModel, cfg: TrainConfig, data: MultimodalDataset,
                     stop: bool) -> MultimodalModel | None:
    """Fit (resuming from ``cfg.out_dir``); ``stop``: die after the first epoch like a killed run, return None."""

    def die(trainer: Trainer, record: dict) -> None:
        if stop and len(trainer.history) == 1:
            raise KeyboardInterrupt

    try:
        Trainer(model, cfg, callbacks=[die]).fit(data, val=None)
    except KeyboardInterrupt:
        return None
    return model


@register("_toy_linear")
class ToyLinear(MultimodalModel):
    """Predict modality b from modality a through a hidden layer with dropout."""

    train_defaults = {"epochs": 3, "batch_size": 16, "lr": 0.01}

    def __init__(self, dims, hidden: int = 8, dropout: float = 0.0, staged: bool = False) -> None:
        super().__init__(dims)
        self.save_config(hidden=hidden, dropout=dropout, staged=staged)
        self.a, self.b = self.modalities[:2]
        self.enc = nn.Linear(self.dims[self.a][0], hidden)
        self.drop = nn.Dropout(dropout)
        self.dec = nn.Linear(hidden, self.dims[self.b][0])
        self.staged = staged

    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.a: torch.relu(self.enc(batch.features[self.a]))}

    def embed(self, batch: Batch) -> torch.Tensor:
        return self.encode(batch)[self.a]

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        h = self.drop(torch.relu(self.enc(batch.features[self.a])))
        per = ((self.dec(h) - batch.features[self.b]) ** 2).mean(1)
        pred = (per * batch.mask.all(1).float()).mean()  # a per-sample mean: exact under DDP sharding
        l2 = 1e-4 * self.enc.weight.pow(2).sum()
        return {"total": pred + l2, "pred": pred, "l2": l2}

    def stages(self) -> list[Stage]:
        if not self.staged:
            return super().stages()
        return [Stage("enc", list(self.enc.parameters()), epochs=2),
                Stage("dec", list(self.dec.parameters()), lr=0.05)]


@register("_toy_complete")
class ToyComplete(ToyLinear):
    """Like ToyLinear but trains only on complete samples, and checks the trainer filtered them."""

    requires_complete = True
    seen: set[int] = set()

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.training:
            assert bool(batch.mask.all()), "the trainer passed an incomplete sample"
            ToyComplete.seen.update(batch.index.tolist())
        return super().loss(batch)


@register("_toy_tied")
class ToyTied(MultimodalModel):
    """An autoencoder whose decoder is the encoder's weight transposed, registered under a second name."""

    def __init__(self, dims, hidden: int = 4) -> None:
        super().__init__(dims)
        self.save_config(hidden=hidden)
        self.m = self.modalities[0]
        self.a = nn.Linear(self.dims[self.m][0], hidden, bias=False)
        self.b_weight_source = self.a.weight  # the same Parameter under a second name

    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.m: self.a(batch.features[self.m])}

    def embed(self, batch: Batch) -> torch.Tensor:
        return self.encode(batch)[self.m]

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch.features[self.m]
        rec = self.a(x) @ self.b_weight_source
        total = ((rec - x) ** 2).mean()
        return {"total": total}


def make_data(n: int = 96, da: int = 6, db: int = 4, missing: int = 0, seed: int = 0,
              val: int = 32) -> MultimodalDataset:
    """a -> b linear-plus-noise pairs; the last ``val`` rows are the val split; ``missing`` rows lack b."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, da, generator=g)
    b = a @ torch.randn(da, db, generator=g) + 0.1 * torch.randn(n, db, generator=g)
    mask = torch.ones(n, 2, dtype=torch.bool)
    if missing:
        mask[:missing, 1] = False
        b[:missing] = 0
    splits = {"train": torch.arange(n - val), "val": torch.arange(n - val, n)} if val else {"train": torch.arange(n)}
    return MultimodalDataset({"a": a, "b": b}, mask, splits=splits, name="toy")


def build_model(dropout: float = 0.0, staged: bool = False, seed: int = 0, hidden: int = 8) -> ToyLinear:
    torch.manual_seed(seed)
    return ToyLinear({"a": 6, "b": 4}, hidden=hidden, dropout=dropout, staged=staged)


def final_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state_for_saving(model)[0].items()}


def folder_data(folder: str | Path) -> MultimodalDataset:
    """``make_data()`` as a memory-mapped float32 dataset folder (written once; the values are exact)."""
    from commonspace.data.folder import open_folder, write_folder

    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        write_folder(make_data(), folder, dtype="float32", chunk_rows=10)
    return open_folder(folder)


def run_training(out_dir: str | Path | None, *, epochs: int = 4, dropout: float = 0.0, stop_after: int | None = None,
                 batch_size: int = 16, optimizer: str = "adam", seed: int = 0, staged: bool = False,
                 resume: bool = True, patience: int | None = None,
                 folder: str | Path | None = None) -> tuple[ToyLinear, list[dict]]:
    """Seeded training of the toy model; ``stop_after=k`` kills the process (os._exit) after epoch k's checkpoint.

    ``folder``: train on ``make_data()`` memory-mapped from that dataset folder instead of in memory."""
    model = build_model(dropout=dropout, staged=staged, seed=seed)
    cfg = TrainConfig.for_model(model, epochs=epochs, batch_size=batch_size, optimizer=optimizer, seed=seed,
                                out_dir=None if out_dir is None else Path(out_dir), progress=False,
                                patience=patience)
    callbacks = []
    if stop_after is not None:
        def die(trainer: Trainer, record: dict) -> None:
            if len(trainer.history) >= stop_after:
                os._exit(3)  # abrupt: no cleanup, no flushing, like a SIGKILL right after the checkpoint
        callbacks.append(die)
    trainer = Trainer(model, cfg, callbacks=callbacks)
    history = trainer.fit(make_data() if folder is None else folder_data(folder), resume=resume)
    return model, history


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--stop-after", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--staged", action="store_true")
    ap.add_argument("--save", default=None, help="write the final weights here (rank 0)")
    ap.add_argument("--folder", default=None, help="train on the data memory-mapped from this dataset folder")
    args = ap.parse_args()
    model, _ = run_training(args.out, epochs=args.epochs, dropout=args.dropout, stop_after=args.stop_after,
                            batch_size=args.batch_size, optimizer=args.optimizer, staged=args.staged,
                            folder=args.folder)
    if args.save and int(os.environ.get("RANK", 0)) == 0:
        save_file(final_state(model), args.save)
    from commonspace.train import cleanup_distributed

    cleanup_distributed()


if __name__ == "__main__":
    main()
