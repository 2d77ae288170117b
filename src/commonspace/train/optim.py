"""Optimiser construction shared by the Trainer, the probes and the benchmarks.

Two things on top of ``torch.optim``, neither changing an update:

* **fused / foreach kernels**: Adam's fused kernel does one pass per parameter instead of about six tensor ops
  (5x faster steps on CPU for a 60 x (512 x 512) model); SGD takes the foreach path, which is bit-identical to
  the per-parameter loop (the fused SGD kernel is not: it rounds differently) and 1.4x faster;
* **no compiler import**: ``torch.optim`` wraps ``add_param_group``, ``zero_grad``, ``step`` and the state-dict
  methods in guards that import ``torch._dynamo`` on first use (1-2 s of a process's first ``fit``, measured in
  docs/benchmarks.md), whose only job is to keep ``torch.compile`` out of those methods. The optimisers here
  call the undecorated methods (what the guards wrap, found through ``__wrapped__``) in eager mode, and the
  guarded ones while ``torch.compile`` traces; where a future torch exposes no ``__wrapped__``, the guarded
  ones are called and only the start-up saving is lost.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = ["LeanAdam", "LeanSGD", "make_adam", "make_sgd"]


@functools.cache
def _plain(base: type[Optimizer], name: str) -> Callable[..., Any]:
    """``base.name`` without torch.optim's guards (and the profiler hook constructing any optimizer puts around
    its class's ``step``), or the method itself if it wraps none; looked up once per method, not every step."""
    return inspect.unwrap(getattr(base, name))


class _Lean:
    """Mixin: the guarded Optimizer methods replaced by their undecorated bodies outside ``torch.compile``."""

    _base: type[Optimizer]

    def _call(self, name: str, *args: Any) -> Any:
        fn = getattr(self._base, name) if torch.compiler.is_compiling() else _plain(self._base, name)
        return fn(self, *args)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._call("add_param_group", param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._call("zero_grad", set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self._call("state_dict")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._call("load_state_dict", state_dict)

    def step(self, closure: Callable[[], float] | None = None) -> Any:
        if torch.compiler.is_compiling():
            return self._base.step(self, closure)
        # the guard's other job: optimizer steps never record autograd history
        with torch.no_grad():
            return _plain(self._base, "step")(self, closure)


class LeanSGD(_Lean, torch.optim.SGD):
    """:class:`torch.optim.SGD` without the compiler import (module docstring)."""

    _base = torch.optim.SGD


class LeanAdam(_Lean, torch.optim.Adam):
    """:class:`torch.optim.Adam` without the compiler import (module docstring)."""

    _base = torch.optim.Adam


def _kernels_apply(params: list[nn.Parameter]) -> bool:
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def make_adam(params: Iterable[nn.Parameter], lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with torch's fused kernel when every parameter is a float tensor on CPU or CUDA (same update rule)."""
    params = list(params)
    return LeanAdam(params, lr=lr, weight_decay=weight_decay, fused=True if _kernels_apply(params) else None)


def make_sgd(params: Iterable[nn.Parameter], lr: float, momentum: float = 0.0, nesterov: bool = False,
             weight_decay: float = 0.0) -> torch.optim.SGD:
    """SGD (optionally Nesterov momentum) on torch's foreach path: the same bits as the per-parameter loop."""
    params = list(params)
    return LeanSGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                   foreach=True if _kernels_apply(params) else None)
