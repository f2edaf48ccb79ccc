"""The world's UNet: an SD1-architecture UNet trained narrow (64 channels) on the scenes' patch codes, then widened
exactly to the 320 channels by which ComfyUI detects SD1.5."""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tiny.models import TINY_UNET_CONFIG

WIDEN = 5
NARROW_CHANNELS = 64
UNET_CONFIG = {**TINY_UNET_CONFIG, "image_size": 16, "model_channels": NARROW_CHANNELS, "transformer_depth": [0, 1],
               "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1}
"""Two levels (16x16 and 8x8 latents), one ResBlock each way, transformers in the 8x8 encoder level, the middle block
and every decoder block (self-attention at 16x16 costs most on a CPU): the decoder has 4 ResBlocks (640, 640, 320,
320 channels once widened), like the tiny test UNet."""
CAPTION_DROPOUT = 0.1


def wide_config() -> dict:
    return {**UNET_CONFIG, "model_channels": NARROW_CHANNELS * WIDEN}


def build_unet(config: dict, seed: int | None = None) -> torch.nn.Module:
    """ComfyUI's UNetModel; with a seed, PyTorch's default init and zeroed residual outputs (a model to train)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import comfy.ops

    unet = UNetModel(**config, operations=comfy.ops.disable_weight_init)
    if seed is None:
        return unet
    torch.manual_seed(seed)
    for name, module in unet.named_modules():
        for base in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(module, base):
                base.reset_parameters(module)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.startswith("out.2") or ".out_layers.3." in name or ".proj_out." in name:
                param.zero_()
    return unet


def sd15_alphas_cumprod() -> torch.Tensor:
    """SD1.5's scaled-linear schedule (1000 steps), as ComfyUI's model sampling uses it."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def _widen_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    """Repeat every channel WIDEN times; incoming weights over repeated channels are divided by WIDEN."""
    if name == "time_embed.0.weight":
        half = NARROW_CHANNELS // 2
        out = torch.zeros(value.shape[0] * WIDEN, NARROW_CHANNELS * WIDEN)
        rows = value.repeat_interleave(WIDEN, 0)
        for i in range(half):
            out[:, WIDEN * i] = rows[:, i]
            out[:, half * WIDEN + WIDEN * i] = rows[:, half + i]
        return out
    widen_out = not name.startswith("out.2")
    widen_in = value.ndim >= 2 and not name.startswith("input_blocks.0.0.") and not (
        ".attn2.to_k." in name or ".attn2.to_v." in name)
    out = value.repeat_interleave(WIDEN, 0) if widen_out else value
    if widen_in:
        out = out.repeat_interleave(WIDEN, 1) / WIDEN
    if ".to_q." in name:
        out = out / math.sqrt(WIDEN)
    return out


def widen_state_dict(narrow: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The narrow UNet's weights as a 320-channel UNet computing the same function (attention logits kept by
    scaling queries, timestep frequencies mapped onto the wider sinusoid's matching ones)."""
    return {name: _widen_tensor(name, value.float()) for name, value in narrow.items()}


class EMA:
    """Exponential moving average of a model's parameters, with warm-up."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                self.shadow[k].mul_(decay).add_(v.detach(), alpha=1 - decay)


def schedule(step: int, steps: int, warmup: int) -> float:
    """The learning-rate factor: linear warm-up, then a cosine over `steps`, never below 2%."""
    return max(min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps)), 0.02)


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, ema: EMA, loss: torch.Tensor, lr: float) -> None:
    """One AdamW step at this learning rate on the loss (gradients clipped to norm 1), then the EMA update."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema.update(model)


def train_unet(batch_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]], empty_context: torch.Tensor, steps: int,
               seed: int, lr: float = 8e-4, warmup: int = 100, ema_decay: float = 0.999, log_every: int = 50,
               snapshot_every: int = 0, snapshot: Callable[[int, dict], None] | None = None
               ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train the narrow UNet to predict the noise (SD1.5's eps objective); batch_fn(step) gives (latents, contexts).
    Returns the EMA weights and the per-step losses."""
    unet = build_unet(UNET_CONFIG, seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    ema = EMA(unet, ema_decay)
    abar = sd15_alphas_cumprod()
    gen = torch.Generator().manual_seed(seed + 1)
    losses, start = [], time.time()
    for step in range(steps):
        x0, context = batch_fn(step)
        b = x0.shape[0]
        drop = torch.rand(b, generator=gen) < CAPTION_DROPOUT
        context = torch.where(drop[:, None, None], empty_context.expand_as(context), context)
        t = torch.randint(0, 1000, (b,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(b, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, timesteps=t.float(), context=context)
        loss = F.mse_loss(pred, noise)
        optimizer_step(unet, opt, ema, loss, lr * schedule(step, steps, warmup))
        losses.append(float(loss.detach()))
        if snapshot_every and snapshot and (step + 1) % snapshot_every == 0:
            snapshot(step + 1, ema.shadow)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"[world] unet step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} ({time.time() - start:.0f} s)",
                  flush=True)
    return ema.shadow, losses
