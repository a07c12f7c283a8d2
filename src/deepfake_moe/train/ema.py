"""Exponential moving average of an expert's weights, exactly as docs/method.md describes it.

decay_n = min(decay, (1 + n) / (10 + n)) at update n = 1, 2, ... (the counter is incremented
before use, as in `torch_ema.ExponentialMovingAverage`, whose `ema.state` the winners
published); shadow <- shadow - (1 - decay_n) * (shadow - param). Only parameters are averaged;
buffers (batch-norm statistics) are taken from the live model, as the published weights do.
timm's ModelEmaV3 has a different warm-up curve, hence this small class.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def warmup_decay(decay: float, n: int) -> float:
    """The decay used at update n (n >= 1)."""
    return min(decay, (1.0 + n) / (10.0 + n))


class ExpertEma:
    def __init__(self, model: nn.Module, decay: float = 0.995, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in model.parameters()]

    def current_decay(self) -> float:
        return warmup_decay(self.decay, self.num_updates) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        one_minus = 1.0 - self.current_decay()
        for s, p in zip(self.shadow, model.parameters()):
            s.sub_((s - p.detach()) * one_minus)

    @torch.no_grad()
    def state_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """`model`'s state dict with the EMA parameters in place of its live ones (buffers live)."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        name_of = {id(p): n for n, p in model.named_parameters()}
        for s, p in zip(self.shadow, model.parameters()):
            state[name_of[id(p)]] = s.detach().clone()
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for s, t in zip(self.shadow, state["shadow"]):
            s.copy_(t)
