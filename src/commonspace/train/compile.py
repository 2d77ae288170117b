"""``TrainConfig(compile=True)``: the training loss through ``torch.compile``, eager where it cannot compile."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledLoss"]

log = logging.getLogger("commonspace.train")


def _from_compiler(err: BaseException) -> bool:
    """True for errors raised by the compiler stack (a missing C++ compiler, an unsupported construct), not for
    errors of the model's own code, which must reach the user as they are."""
    return type(err).__module__.split(".")[:2] in (["torch", "_dynamo"], ["torch", "_inductor"])


class CompiledLoss:
    """Calls ``torch.compile(module)``; on the first compiler error it warns once and runs ``module`` eagerly.

    The compiled function shares the module's parameters, so the optimizer, checkpoints and DDP see the same
    tensors either way. Compilation happens at the first call and again for each new batch shape (the last,
    partial batch of an epoch), which a short run pays in full: it pays off on long runs of small models,
    where per-op overhead dominates (docs/benchmarks.md).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.compiled: Any = None
        try:
            self.compiled = torch.compile(module)
        except Exception as err:  # torch.compile itself refuses (no dynamo for this Python, say)
            self._fall_back(err)

    def _fall_back(self, err: BaseException) -> None:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("compile=True: torch.compile failed (%s: %s); training runs eagerly", type(err).__name__,
                    first[:300])
        self.compiled = None

    def __call__(self, batch: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(batch)
            except Exception as err:
                if not _from_compiler(err):
                    raise
                self._fall_back(err)
        return self.module(batch)
