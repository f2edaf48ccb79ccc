"""fp16 gradients at SDXL's 1024 px latent (128x128): a head and its loss on features of a small float16 network,
the latent's gradient against float32. The CPU's own float16 kernels take minutes here, so float16 is emulated as a
GPU computes it: float32 arithmetic inside each op, every op's output and every gradient stored in float16."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from readout.guidance.rules.base import gradient_scale
from readout.heads.architecture import HeadConfig, ReadoutHead
from readout.targets.spatial import spatial_map_loss

LATENT = (1, 4, 128, 128)


class _StoredInFloat16(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(torch.float16).to(tensor.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.to(torch.float16).to(grad.dtype)


class Float16Storage(TorchFunctionMode):
    """Round each new differentiable op output, and the gradient that reaches it, to float16."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (isinstance(out, torch.Tensor) and out.is_floating_point() and out.grad_fn is not None
                and not any(out is arg for arg in args)):
            return _StoredInFloat16.apply(out)
        return out


class SmallNetwork(torch.nn.Module):
    """Three 320-wide convolutions from the latent, read at 32, 64 and 128 px as decoder layers are."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(4 if i == 0 else 320, 320, 3, padding=1) for i in range(3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index, conv in enumerate(self.convs):
            x = F.silu(conv(x))
            features.append(F.avg_pool2d(x, 2 ** (2 - index)) if index < 2 else x)
        return features


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    head = ReadoutHead(HeadConfig(kind="depth", family="sdxl", dims=(320,) * 3, projection_dim=128,
                                  use_output_head=True))
    return SmallNetwork(), head, torch.randn(LATENT), torch.rand(1, 3, 128, 128), torch.randn(1, 1280)


def latent_gradient(setting, scale: float, float16: bool) -> torch.Tensor:
    network, head, latent, target, emb = setting
    x = latent.clone().requires_grad_(True)
    with Float16Storage() if float16 else torch.enable_grad():
        readout = head(network(x), emb, checkpoint_layers=True)
    loss = spatial_map_loss(readout.float(), target, (-1.0, 1.0), sparse=False)
    return torch.autograd.grad(loss.sum() * scale, x)[0]


def agreement(setting, scale: float) -> tuple[float, float]:
    """(cosine of the float16 gradient with the float32 one, share of float16 gradient elements that are zero)."""
    half, full = latent_gradient(setting, scale, True), latent_gradient(setting, scale, False)
    return float(F.cosine_similarity(half.flatten(), full.flatten(), dim=0)), float((half == 0).float().mean())


def test_the_scaled_loss_keeps_float16_gradients_of_a_1024px_latent(setting):
    """The guided pass scales the per-pixel mean loss by the latent's size before the backward (fast.gradient_scale):
    the float16 gradient then follows the float32 one; unscaled, it is flushed toward zero (measured on the CPU's
    real float16 kernels, in 270 s: cosine 0.88 and 2.8% zeros unscaled, 0.9993 and none scaled; this emulation: 0.945
    and 0.9996)."""
    scale = gradient_scale(torch.zeros(LATENT))
    assert scale == 4 * 128 * 128
    cosine, zeros = agreement(setting, scale)
    assert cosine > 0.995 and zeros < 1e-3, (cosine, zeros)
    unscaled_cosine, unscaled_zeros = agreement(setting, 1.0)
    assert unscaled_cosine < 0.97 or unscaled_zeros > 0.01, "the emulation shows no float16 underflow to prevent"
