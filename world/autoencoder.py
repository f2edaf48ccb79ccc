"""The world's autoencoder in ComfyUI's TAESD layout: a whitened linear 8x8-patch encoder (PCA of scene patches)
written exactly into TAESD's encoder layers, and a TAESD decoder trained to invert it."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from world.scenes import SIZE, random_scene

PATCH = 8
LATENT_CHANNELS = 4
SD15_LATENT_SCALE = 0.18215
"""TAESD's `vae_scale` is set to SD1.5's latent factor, so the UNet sees the whitened patch codes themselves."""


def scene_batch(seeds: range | list[int]) -> torch.Tensor:
    """Rendered scenes as a (B, 3, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.stack([random_scene(s).image() for s in seeds])).permute(0, 3, 1, 2).contiguous()


def fit_patch_encoder(seeds: range) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of the scenes' 8x8 patches: (W, mean) with z = W (patch - mean) whitened to unit variance per channel."""
    patches = F.unfold(scene_batch(seeds), PATCH, stride=PATCH).permute(0, 2, 1).reshape(-1, 3 * PATCH * PATCH).double()
    mean = patches.mean(0)
    cov = torch.cov((patches - mean).T)
    values, vectors = torch.linalg.eigh(cov)
    top = vectors[:, -LATENT_CHANNELS:].flip(1).T
    top = top * torch.sign(top[torch.arange(LATENT_CHANNELS), top.abs().argmax(1)])[:, None]
    weight = top / values[-LATENT_CHANNELS:].flip(0).sqrt()[:, None]
    return weight.float(), mean.float()


def encode_patches(images: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 4, H/8, W/8) whitened patch codes."""
    b, _, h, w = images.shape
    patches = F.unfold(images, PATCH, stride=PATCH)
    codes = weight @ (patches - mean[None, :, None])
    return codes.reshape(b, LATENT_CHANNELS, h // PATCH, w // PATCH)


def _zero_blocks(encoder: torch.nn.Module) -> None:
    """Every TAESD Block becomes ReLU: its residual branch is zero, its skip the identity."""
    with torch.no_grad():
        for module in encoder:
            if hasattr(module, "fuse"):
                for param in module.parameters():
                    param.zero_()


def write_patch_encoder(encoder: torch.nn.Module, weight: torch.Tensor, mean: torch.Tensor) -> None:
    """Set a TAESD Encoder so that it computes `encode_patches` exactly: two exact 2x2 space-to-depth stages (all
    values non-negative, so the Blocks' ReLUs pass them), then the linear map as +/- parts joined by the last conv."""
    layers = list(encoder)
    with torch.no_grad():
        for param in encoder.parameters():
            param.zero_()
        _zero_blocks(encoder)
        first, s1, s2, s3, last = layers[0], layers[2], layers[6], layers[10], layers[14]
        for c in range(3):
            first.weight[c, c, 1, 1] = 1.0
        first.bias[3] = 1.0
        for dy in range(2):
            for dx in range(2):
                for c in range(3):
                    s1.weight[(dy * 2 + dx) * 3 + c, c, 1 + dy, 1 + dx] = 1.0
                for k in range(12):
                    s2.weight[(dy * 2 + dx) * 12 + k, k, 1 + dy, 1 + dx] = 1.0
        s1.weight[12, 3, 1, 1] = 1.0
        s2.weight[48, 12, 1, 1] = 1.0
        bias = -(weight @ mean)
        grid = weight.reshape(LATENT_CHANNELS, 3, PATCH, PATCH)
        for dy3 in range(2):
            for dx3 in range(2):
                for dy2 in range(2):
                    for dx2 in range(2):
                        for dy1 in range(2):
                            for dx1 in range(2):
                                py, px = 4 * dy3 + 2 * dy2 + dy1, 4 * dx3 + 2 * dx2 + dx1
                                for c in range(3):
                                    k2 = (dy2 * 2 + dx2) * 12 + (dy1 * 2 + dx1) * 3 + c
                                    s3.weight[:LATENT_CHANNELS, k2, 1 + dy3, 1 + dx3] = grid[:, c, py, px]
        s3.weight[:LATENT_CHANNELS, 48, 1, 1] = bias
        s3.weight[LATENT_CHANNELS:2 * LATENT_CHANNELS] = -s3.weight[:LATENT_CHANNELS]
        for j in range(LATENT_CHANNELS):
            last.weight[j, j, 1, 1] = 1.0
            last.weight[j, LATENT_CHANNELS + j, 1, 1] = -1.0


def build_taesd(weight: torch.Tensor, mean: torch.Tensor, decoder_state: dict[str, torch.Tensor] | None = None):
    """ComfyUI's TAESD with the patch encoder written in and the trained decoder loaded."""
    from comfy.taesd.taesd import TAESD

    taesd = TAESD(latent_channels=LATENT_CHANNELS)
    write_patch_encoder(taesd.taesd_encoder, weight, mean)
    if decoder_state is not None:
        taesd.taesd_decoder.load_state_dict(decoder_state)
    with torch.no_grad():
        taesd.vae_scale.fill_(SD15_LATENT_SCALE)
        taesd.vae_shift.zero_()
    return taesd


def _init_decoder(decoder: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for module in decoder.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.Conv2d.reset_parameters(module)


def train_decoder(weight: torch.Tensor, mean: torch.Tensor, steps: int, seed: int, batch: int = 16, crop: int = 64,
                  lr: float = 1e-3, log_every: int = 100) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train a TAESD decoder to invert the patch codes on random crops of fresh scenes; returns its state and losses."""
    from comfy.taesd.taesd import Decoder

    decoder = Decoder(LATENT_CHANNELS)
    _init_decoder(decoder, seed)
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses, start = [], time.time()
    cells = (SIZE - crop) // PATCH + 1
    for step in range(steps):
        images = scene_batch(range(seed * 10**6 + step * batch, seed * 10**6 + (step + 1) * batch))
        codes = encode_patches(images, weight, mean)
        oy, ox = (int(v) for v in torch.randint(cells, (2,), generator=gen))
        target = images[:, :, oy * PATCH:oy * PATCH + crop, ox * PATCH:ox * PATCH + crop]
        z = codes[:, :, oy:oy + crop // PATCH, ox:ox + crop // PATCH]
        out = decoder(z)
        loss = F.l1_loss(out, target) + F.mse_loss(out, target)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"[world] decoder step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} ({time.time() - start:.0f} s)",
                  flush=True)
    return {k: v.detach().clone() for k, v in decoder.state_dict().items()}, losses


def psnr(decoded: torch.Tensor, images: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = float(F.mse_loss(decoded.clamp(0, 1), images))
    return 10 * math.log10(1 / max(mse, 1e-12))
