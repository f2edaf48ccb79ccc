"""`python -m world.qwen_image`: train the world's Qwen-Image-Edit: ComfyUI's Qwen-Image MMDiT in the configuration
its detection fixes (3072 wide, 24 heads of 128, 3584-wide text), two dual-stream blocks, that samples in 4 to 8
steps at CFG 1 as the edit models' lightning LoRAs do, with and without a reference image.

It trains and is stored narrow (128 wide: one head of 128, reading the world's 768-wide CLIP-L; trained dense, then
with its text input and feed-forward matrices as rank-`RANK` factors, which are stored) and `widen_state_dict` tiles
it to Qwen-Image's width (as the world's Z-Image: world.zimage), its text input padded with zeros to 3584 channels.
Two steps of three distill the SD1.5 world UNet guided at the world's CFG (text to image); every third is an edit
step: the scene's clean latent is the reference image, appended after the generated image's tokens as
Qwen-Image-Edit's encoders append it, and the target is that same scene, so the model keeps a reference image as an
edit model told to keep it does. ComfyUI's Qwen latent is Wan 2.1's: the model reads the patch codes that the Flux
latent of the world's TAESD16 holds, and `wan_latent` / `flux_latent` convert between the two formats (a TAESD
cannot undo Wan's per-channel normalization before its clamp, so no Wan-format world VAE exists).
"""
from __future__ import annotations

import argparse
import sys

import torch

from world import paths
from world.distill import (add_distill_arguments, distill_from_world, factorize, init_for_training, train_flow,
                           widen_tensor)
from tiny.families import QWEN_TEXT_WIDTH as TEXT_WIDTH
from world.zimage import shifted_times

RANK = 48
FACTORED = ("txt_in", "img_mlp", "txt_mlp")
"""The matrices stored as rank-RANK factors (the text input and the feed-forward layers); the others are stored dense."""
TILES = 24
NARROW_CONFIG = {
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2, "attention_head_dim": 128,
    "num_attention_heads": 1, "joint_attention_dim": 768, "pooled_projection_dim": 768,
    "axes_dims_rope": (16, 56, 56),
}
WIDE_CONFIG = {**NARROW_CONFIG, "num_attention_heads": NARROW_CONFIG["num_attention_heads"] * TILES,
               "joint_attention_dim": TEXT_WIDTH}
"""Qwen-Image's configuration as ComfyUI's detection gives it (its 60 blocks aside)."""
EDIT_EVERY = 3
FACTORED_SHARE = 0.2
FACTORED_LR = 3e-4
FACTORED_WARMUP = 20
QWEN_IMAGE_SEED_BASE = 7 * 10**7
CHUNKED_OUTPUTS = {"img_mod.1.weight": 6, "img_mod.1.bias": 6, "txt_mod.1.weight": 6, "txt_mod.1.bias": 6,
                   "norm_out.linear.weight": 2, "norm_out.linear.bias": 2}
"""Outputs that are several residual-wide vectors side by side (a stream's six modulations; the last scale, shift)."""


def build_qwen_image(config: dict, device: str = "cpu") -> torch.nn.Module:
    """ComfyUI's Qwen-Image transformer in this configuration, weights uninitialized."""
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
    import comfy.ops

    return QwenImageTransformer2DModel(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device=device,
                                       **config)


def build_narrow(seed: int, factored: bool = True) -> torch.nn.Module:
    """The narrow model, PyTorch's init with its output layer and modulations zero, unit norm gains; factored: the
    FACTORED matrices as rank-RANK factors."""
    model = init_for_training(build_qwen_image(NARROW_CONFIG), seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("norm_out.linear", "proj_out")) or "_mod." in name:
                param.zero_()
    return factorize(model, RANK, FACTORED) if factored else model


def widen_state_dict(narrow: dict[str, torch.Tensor], config: dict = WIDE_CONFIG) -> dict[str, torch.Tensor]:
    """The wide model's weights from the narrow model's dense weights: residual-wide dimensions tiled, the text input
    padded with zeros (its RMSNorm gain scaled so that the padded text normalizes as the narrow text does)."""
    narrow_dim = NARROW_CONFIG["num_attention_heads"] * NARROW_CONFIG["attention_head_dim"]
    tiles = config["num_attention_heads"] * config["attention_head_dim"] // narrow_dim
    shapes = {k: v.shape for k, v in build_qwen_image(config, device="meta").state_dict().items()}
    if set(shapes) != set(narrow):
        differ = sorted(set(shapes) ^ set(narrow))[:4]
        raise ValueError(f"the narrow and wide Qwen-Image differ in their weights: {differ}")
    wide = {key: widen_tensor(value, shapes[key], next((n for s, n in CHUNKED_OUTPUTS.items() if key.endswith(s)), 1),
                              tiles) for key, value in narrow.items()}
    text_share = NARROW_CONFIG["joint_attention_dim"] / config["joint_attention_dim"]
    wide["txt_norm.weight"] = wide["txt_norm.weight"] * text_share**0.5
    return wide


def pad_text(context: torch.Tensor, width: int = TEXT_WIDTH) -> torch.Tensor:
    """The world's CLIP-L tokens as Qwen-Image's text width: zeros after the 768 channels."""
    return torch.cat([context, context.new_zeros(*context.shape[:-1], width - context.shape[-1])], -1)


def wan_latent(flux_latent: torch.Tensor) -> torch.Tensor:
    """A latent of the world's Flux-format TAESD16 as ComfyUI's Wan 2.1 latent holding the same patch codes (one
    frame: batch, 16, 1, H, W): what the world's Qwen-Image reads through Wan's normalization."""
    from comfy.latent_formats import Flux, Wan21

    codes = Flux().process_in(flux_latent.float())
    return Wan21().process_out(codes if codes.dim() == 5 else codes[:, :, None])


def flux_latent(wan: torch.Tensor) -> torch.Tensor:
    """A Wan 2.1 latent of the world's Qwen-Image as the world's Flux-format TAESD16 decodes it (batch, 16, H, W)."""
    from comfy.latent_formats import Flux, Wan21

    codes = Wan21().process_in(wan.float() if wan.dim() == 5 else wan.float()[:, :, None])
    return Flux().process_out(codes[:, :, 0])


class WanLatentVAE:
    """The world's TAESD16 as the world's Qwen-Image sees it: `encode` gives Wan 2.1 latents (readout.train's frozen
    model encodes its training images with it)."""

    def __init__(self, vae) -> None:
        self.vae = vae

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return wan_latent(self.vae.encode(pixels))


def use_fused_attention() -> None:
    """Training only: PyTorch's fused attention in Qwen-Image's blocks (ComfyUI picks a slower one on CPUs)."""
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.qwen_image.model as qwen_image

    qwen_image.optimized_attention_masked = attention.attention_pytorch


def train_qwen_image(batch_fn, empty: tuple[torch.Tensor, torch.Tensor], steps: int, seed: int, teacher=None,
                     stop_after: int | None = None, snapshot=None, snapshot_every: int = 0,
                     ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The narrow world Qwen-Image trained by flow matching on the guided teacher, every EDIT_EVERY-th step an edit
    step with the scene itself as the reference image (no caption dropout: it samples at CFG 1). It trains dense (its
    factors from the start learned several times slower), and for the last FACTORED_SHARE of the run with the FACTORED
    matrices as rank-RANK factors of the dense weights (their truncated SVD), which is what is stored."""

    def predict(model, xt, t, context, pooled, reference=None):
        refs = None if reference is None else [reference[:, :, None]]
        return model(xt[:, :, None], t, context, ref_latents=refs)[:, :, 0]

    total = stop_after or steps
    factored_steps = max(1, round(total * FACTORED_SHARE))
    common = {"teacher": teacher, "times": shifted_times, "edit_every": EDIT_EVERY}
    model = build_narrow(seed, factored=False)
    dense, losses = train_flow(model, predict, batch_fn, empty, total - factored_steps, seed, "world-qwen-image", **common)
    model.load_state_dict(dense)
    start = total - factored_steps

    def shifted_batch(step: int):
        return batch_fn(start + step)

    def shifted_snapshot(step: int, ema: dict[str, torch.Tensor], more: list[float]) -> None:
        snapshot(start + step, ema, losses + more)

    factors, more = train_flow(factorize(model, RANK, FACTORED), predict, shifted_batch, empty, factored_steps, seed + 1,
                               "world-qwen-image factored", lr=FACTORED_LR, warmup=FACTORED_WARMUP,
                               snapshot=shifted_snapshot if snapshot else None, snapshot_every=snapshot_every, **common)
    return factors, losses + more


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_distill_arguments(parser, default_steps=1200, default_stop_after=1200)
    args = parser.parse_args(argv)
    return distill_from_world(args, paths.QWEN_IMAGE_WEIGHTS, "qwen_image_training_log.json", "world-qwen-image",
                              QWEN_IMAGE_SEED_BASE, RANK, lambda batch, empty, teacher, **options: train_qwen_image(
                                  batch, empty, args.steps, seed=args.seed + 2, teacher=teacher, **options),
                              attention=use_fused_attention, teacher_cfg=4.0)


if __name__ == "__main__":
    sys.exit(main())
