"""Blocks that add into their inputs in place (Flux's) keep copies of the activations they save, not of their
weights (a copy of every weight would double the model in memory for the backward)."""
from __future__ import annotations

import torch
from torch import nn

from readout.guidance.grad_pass import saved_tensor_copies


class GatedBlock(nn.Module):
    """A frozen linear layer whose output is gated by its input: the backward needs the input and the weight."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8).requires_grad_(False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h) * h


def test_activations_are_copied_and_weights_kept():
    block = GatedBlock()
    x = torch.randn(2, 8, requires_grad=True)
    expected = torch.autograd.grad(block(x * 1).sum(), x)[0]
    with saved_tensor_copies([block]):
        h = x * 1
        out = block(h)
    linear_backward = next(node for node, _ in out.grad_fn.next_functions if hasattr(node, "_saved_mat2"))
    assert linear_backward._saved_mat2.untyped_storage().data_ptr() == block.linear.weight.untyped_storage().data_ptr()
    h.add_(1.0)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0], expected)
