"""Weight averaging: an exponential moving average (EMA) of the trained weights, kept beside them.

After every optimizer step, for each trained parameter p and its average a,

    a <- d * a + (1 - d) * p,    d = min(decay, (1 + n) / (10 + n)) at the n-th update

The average covers about the last 1 / (1 - d) steps. The warm-up of d (as in TensorFlow's
ExponentialMovingAverage with num_updates) keeps the random initial weights from lingering in it:
until d reaches `decay`, at n = (10 decay - 1) / (1 - decay) updates (890 for 0.99, ~4,500 for
0.998), the average covers about the last n / 9 steps. So on a run of ~2,000 steps any decay above
~0.996 gives the same average, over its last ~11 % of steps.

The averages are copies of the trained parameters only (a frozen tower does not move), in their fp32
(picovlm keeps fp32 weights, also under bf16 autocast); the model keeps training its own weights, and
`swapped_in()` lends it the averages for an evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        # detached views of the weights, taken once: they share the storage the optimizer updates
        self.params = [p.detach() for p in model.parameters() if p.requires_grad]
        self.averages = [p.clone() for p in self.params]
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the averages towards the weights after an optimizer step."""
        weight = 1 - self.current_decay()
        self.updates += 1
        torch._foreach_lerp_(self.averages, self.params, weight)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Make the averages the model's weights (at the end of training: what model/ is saved with)."""
        for param, average in zip(self.params, self.averages):
            param.copy_(average)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model with the averaged weights inside the block, its own weights again after it."""
        with torch.no_grad():
            trained = [p.clone() for p in self.params]
            self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for param, weight in zip(self.params, trained):
                    param.copy_(weight)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "averages": dict(zip(self.names, self.averages))}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        for name, average in zip(self.names, self.averages):
            average.copy_(state["averages"][name])
