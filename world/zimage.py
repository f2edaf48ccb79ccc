"""`python -m world.zimage`: train the world's Z-Image: ComfyUI's NextDiT in Z-Image's configuration (3840 wide, 30
heads of 128, Z-Image's modulation, time scale and rotary axes, so ComfyUI detects it as ZImage: shift 3), three main
layers, distilled from the SD1.5 world model to sample in 8 steps at CFG 1 as Z-Image Turbo does.

The model trains and is stored narrow: the same NextDiT 256 wide (two heads of 128), its weight matrices rank-32
factors. `widen_state_dict` tiles it to Z-Image's width: every 3840-wide activation is the narrow one repeated 15
times (heads 2t and 2t+1 of the wide model are the narrow model's two heads), the feed-forward and time-embedding
hidden units padded with zeros, so the wide model computes exactly what the narrow one does.

Its target is the SD1.5 world UNet's estimate classifier-free guided at the world's CFG (guidance distillation: at
CFG 1 it gives what the teacher gives at CFG 4), at flow times drawn half uniformly and half through shift 3, where an
8-step Z-Image schedule evaluates. It reads the world's CLIP-L tokens and the world's 16-channel Flux latent (Z-Image
uses Flux's latent format), so the world's TAESD16 decodes it.
"""
from __future__ import annotations

import argparse
import sys

import torch

from world import paths
from world.distill import add_distill_arguments, distill_from_world, factorize, init_for_training, train_flow, widen_tensor

RANK = 32
TILES = 15
NARROW_CONFIG = {
    "patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": 768, "n_layers": 3, "qk_norm": True,
    "n_heads": 2, "n_kv_heads": 2, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
    "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
}
WIDE_CONFIG = {**NARROW_CONFIG, "dim": NARROW_CONFIG["dim"] * TILES, "n_heads": 30, "n_kv_heads": 30}
"""Z-Image's configuration as ComfyUI's detection gives it for a 3840-wide NextDiT."""
SHIFT = 3.0
TEACHER_CFG = 4.0
ZIMAGE_SEED_BASE = 5 * 10**7
CHUNKED_OUTPUTS = {"attention.qkv.weight": 3, "adaLN_modulation.0.weight": 4, "adaLN_modulation.0.bias": 4}
"""Outputs that are several residual-wide vectors side by side (q, k, v; a block's four modulations): each tiled."""


def build_nextdit(config: dict, device: str = "cpu") -> torch.nn.Module:
    """ComfyUI's NextDiT in this configuration, weights uninitialized."""
    from comfy.ldm.lumina.model import NextDiT
    import comfy.ops

    return NextDiT(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device=device, **config)


def build_narrow(seed: int) -> torch.nn.Module:
    """The narrow model, factored: random factors, zero output layer and modulations, unit norm gains."""
    return factorize(init_for_training(build_nextdit(NARROW_CONFIG), seed), RANK)


def widen_state_dict(narrow: dict[str, torch.Tensor], config: dict = WIDE_CONFIG) -> dict[str, torch.Tensor]:
    """The wide model's weights from the narrow model's dense weights (shapes from a model built on the meta
    device); `config` is TILES times as wide as the narrow model by default."""
    tiles = config["dim"] // NARROW_CONFIG["dim"]
    shapes = {k: v.shape for k, v in build_nextdit(config, device="meta").state_dict().items()}
    if set(shapes) != set(narrow):
        raise ValueError(f"the narrow and wide NextDiT differ in their weights: {sorted(set(shapes) ^ set(narrow))[:4]}")
    return {key: widen_tensor(value, shapes[key], next((n for s, n in CHUNKED_OUTPUTS.items() if key.endswith(s)), 1), tiles)
            for key, value in narrow.items()}


def shifted_times(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Flow times, half uniform, half through Z-Image's shift (where its 8-step schedule evaluates)."""
    u = torch.rand(batch, generator=gen)
    shifted = SHIFT * u / (1 + (SHIFT - 1) * u)
    return torch.where(torch.rand(batch, generator=gen) < 0.5, u, shifted)


def use_fused_attention() -> None:
    """Training only: PyTorch's fused attention in NextDiT's blocks (ComfyUI picks a slower one on CPUs)."""
    import comfy.ldm.lumina.model as lumina
    import comfy.ldm.modules.attention as attention

    lumina.optimized_attention_masked = attention.attention_pytorch


def train_zimage(batch_fn, empty: tuple[torch.Tensor, torch.Tensor], steps: int, seed: int, teacher=None,
                 **options) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The narrow world Z-Image trained by flow matching on the guided teacher, without caption dropout (it samples
    at CFG 1)."""

    def predict(model, xt, t, context, pooled):
        return model(xt, t, context, num_tokens=context.shape[1])

    return train_flow(build_narrow(seed), predict, batch_fn, empty, steps, seed, "world-zimage", teacher=teacher,
                      times=shifted_times, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_distill_arguments(parser, default_steps=1500, default_stop_after=1000)
    args = parser.parse_args(argv)
    return distill_from_world(args, paths.ZIMAGE_WEIGHTS, "zimage_training_log.json", "world-zimage", ZIMAGE_SEED_BASE,
                              RANK, lambda batch, empty, teacher, **options: train_zimage(
                                  batch, empty, args.steps, seed=args.seed + 2, teacher=teacher, **options),
                              attention=use_fused_attention, teacher_cfg=TEACHER_CFG)


if __name__ == "__main__":
    sys.exit(main())
