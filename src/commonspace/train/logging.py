"""Per-epoch records: a JSONL file (one line per epoch, flushed), optional TensorBoard and a progress bar."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from commonspace.data.io import raise_if_disk_error
from commonspace.train.checkpoint import write_text_atomic

__all__ = ["Progress", "RunLogger", "require_tensorboard"]

log = logging.getLogger("commonspace.train")


def require_tensorboard() -> type:
    """``SummaryWriter``, or an ImportError that says how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch raises this when the tensorboard package is absent
        raise ImportError("tensorboard=True needs the tensorboard package: pip install 'commonspace[tensorboard]' "
                          "(or pip install tensorboard), or set tensorboard=False") from exc
    return SummaryWriter


def _clean(v: Any) -> Any:
    # JSON has no NaN/inf; write null so every line stays standard JSON
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


class RunLogger:
    """Writes ``out_dir/log.jsonl`` and, optionally, TensorBoard scalars. Inactive when ``out_dir`` is None."""

    def __init__(self, out_dir: Path | None, tensorboard: bool = False, history: list[dict] | None = None) -> None:
        self.path = None if out_dir is None else Path(out_dir) / "log.jsonl"
        self.writer = None
        if self.path is not None:
            # on resume the file may hold epochs after the checkpoint; rewrite it from the checkpoint's history
            lines = "".join(json.dumps(_clean(r)) + "\n" for r in history or [])
            write_text_atomic(self.path, lines)
            self._f = open(self.path, "a", encoding="utf-8")
            self._failed = False
        if tensorboard:
            writer_cls = require_tensorboard()
            if out_dir is None:
                raise ValueError("tensorboard=True needs out_dir (the event files go to out_dir/tensorboard)")
            step = sum(1 for r in history or [] if "epoch" in r)
            # purge_step drops events a killed run wrote after its last checkpoint
            self.writer = writer_cls(log_dir=str(Path(out_dir) / "tensorboard"), purge_step=step or None)

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.path is not None:
            try:
                self._f.write(json.dumps(_clean(record)) + "\n")
                self._f.flush()
            except OSError as exc:
                self._failed = True
                raise_if_disk_error(exc, self.path)  # a full or read-only disk: one line
                raise
        if self.writer is not None:
            for k, v in record.get("train", {}).items():
                self.writer.add_scalar(f"train/{k}", v, step)
            for k in ("val_loss", "val_metric", "samples_per_s", "lr"):
                if record.get(k) is not None:
                    self.writer.add_scalar(k.replace("_", "/", 1) if k.startswith("val") else k, record[k], step)
            self.writer.flush()
        parts = [f"{k}={v:.4g}" for k, v in record.get("train", {}).items()]
        for k in ("val_loss", "val_metric"):
            if record.get(k) is not None:
                parts.append(f"{k}={record[k]:.4g}")
        log.info("stage %s epoch %s: %s (%.1fs, %.0f samples/s)", record.get("stage"), record.get("epoch"),
                 " ".join(parts), record.get("seconds", 0.0), record.get("samples_per_s") or 0.0)

    def close(self) -> None:
        if self.path is not None and not self._f.closed:
            try:
                self._f.close()
            except OSError as exc:
                if not self._failed:  # else already reported: the buffered line failed again
                    raise_if_disk_error(exc, self.path)
                    raise
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Progress:
    """A transient rich progress bar: drawn only on a terminal, erased when done, so logs stay clean."""

    def __init__(self, enabled: bool) -> None:
        self._p = None
        self._task = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        console = Console(stderr=True)
        if not console.is_terminal:  # CI logs and pipes would get one frame per refresh otherwise
            return
        self._p = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)

    def __enter__(self) -> Progress:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def start_stage(self, description: str, total: int) -> None:
        if self._p is not None:
            if self._task is not None:
                self._p.remove_task(self._task)
            self._task = self._p.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._p is not None and self._task is not None:
            self._p.advance(self._task, n)

    def describe(self, description: str) -> None:
        if self._p is not None and self._task is not None:
            self._p.update(self._task, description=description)
