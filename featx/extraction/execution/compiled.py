"""``torch.compile`` (operator fusion, weights pre-packed for oneDNN) on top of the fold.

It compiles for a minute or more, and on a 2-core CPU it measured no faster than the fold alone,
so it is never the default: use it where a benchmark shows that it pays.
"""

from __future__ import annotations

import torch
from torch import nn


class FixedBatch(nn.Module):
    """Runs the compiled model on batches of one size only, padding short batches with zeros, so
    the last batch (or one with skipped files) does not trigger a second compilation."""

    def __init__(self, compiled: nn.Module, batch_size: int):
        super().__init__()
        self.compiled, self.batch_size = compiled, batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n < self.batch_size:
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        return self.compiled(x)[:n]


def compiled(folded: nn.Module, batch_size: int) -> nn.Module:
    # freezing: weights become constants, so oneDNN convolutions get their weights pre-packed.
    return FixedBatch(torch.compile(folded, dynamic=False, options={"freezing": True}), batch_size)
