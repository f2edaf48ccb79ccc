"""`python -m world.flux`: train the world's Flux-architecture model (ComfyUI's Flux module, 128 wide: one head of
128 channels, 2 double- and 2 single-stream blocks) by flow matching on the same scenes and captions as the SD1.5
world model, and write its fp16 weights into world/weights/.

Every weight matrix is trained as a rank-24 product and stored as its two factors (1 MB instead of 4 MB: the
committed weights had a 16 MB budget then; 24 MB now); `dense_state_dict` multiplies them out into the Flux file ComfyUI loads.

The flow-matching target of each noised scene is the SD1.5 world model's denoised estimate of it (its expected
velocity given x_t, where its schedule reaches) instead of the one noise sample drawn: the same optimum with far less
variance, which is what lets the transformer learn the scenes within a CPU hour.

It reads the world's CLIP-L (tokens and pooled vector, as CLIPTextEncode gives them) and the world's latents widened
to Flux's 16 channels with zero channels: the world's TAESD then decodes it with zero-padded input weights, and its
`vae_scale` / `vae_shift` set to Flux's latent format make ComfyUI's Flux latent the whitened patch codes. Like
schnell it has no guidance embedding (ComfyUI: FluxSchnell, shift 1), and it is trained with caption dropout for CFG.
ComfyUI 0.33 loads a 128-wide Flux through UNETLoader; 0.3.75 detects every Flux as 24 heads of 128 and cannot.
"""
from __future__ import annotations

import argparse
import sys

import torch

from world import paths
from world.distill import add_distill_arguments, distill_from_world, factorize, init_for_training, train_flow

RANK = 24
FLUX_CONFIG = {
    "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 768, "hidden_size": 128,
    "mlp_ratio": 4.0, "num_heads": 1, "depth": 2, "depth_single_blocks": 2, "axes_dim": [16, 56, 56],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False,
}
FLUX_LATENT_CHANNELS = 16
FLUX_LATENT_FORMAT = (0.3611, 0.1159)
"""ComfyUI's Flux latent (scale, shift): the world's Flux VAE undoes it, so the model sees the patch codes."""
CAPTION_DROPOUT = 0.1
FLUX_SEED_BASE = 3 * 10**7


def build_flux(seed: int | None = None) -> torch.nn.Module:
    """ComfyUI's Flux at the world's size; with a seed, PyTorch's default init and zeroed output layer."""
    import dataclasses

    from comfy.ldm.flux.model import Flux, FluxParams
    import comfy.ops

    fields = {field.name for field in dataclasses.fields(FluxParams)}
    config = {**FLUX_CONFIG, **({"txt_ids_dims": []} if "txt_ids_dims" in fields else {})}
    model = Flux(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu", **config)
    return model if seed is None else init_for_training(model, seed)


def comfyui_reads_world_flux(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether this ComfyUI's model detection reads the world's Flux at its own width: 0.33 and newer do; 0.3.75
    takes every Flux for 24 heads of 128 whatever its width."""
    import comfy.model_detection

    config = comfy.model_detection.detect_unet_config(state_dict, "") or {}
    return config.get("hidden_size") == FLUX_CONFIG["hidden_size"] and config.get("num_heads") == FLUX_CONFIG["num_heads"]


def widen_latents(codes: torch.Tensor) -> torch.Tensor:
    """The 4 whitened patch codes as Flux's 16 latent channels (the other 12 zero)."""
    pad = torch.zeros(codes.shape[0], FLUX_LATENT_CHANNELS - codes.shape[1], *codes.shape[2:])
    return torch.cat([codes, pad], dim=1)


def use_fused_attention() -> None:
    """Training only: PyTorch's fused attention in Flux's blocks (ComfyUI picks a slower one on CPUs)."""
    import comfy.ldm.flux.math as flux_math
    import comfy.ldm.modules.attention as attention

    flux_math.optimized_attention = attention.attention_pytorch


def train_flux(batch_fn, empty: tuple[torch.Tensor, torch.Tensor], steps: int, seed: int, teacher=None,
               **options) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The world's Flux (factored, PyTorch's init) trained by flow matching with caption dropout for CFG
    (world.distill.train_flow takes the other options)."""

    def predict(model, xt, t, context, pooled):
        with torch.autograd.graph.saved_tensors_hooks(torch.Tensor.clone, lambda saved: saved):
            return model(xt, t, context, pooled)  # Flux's blocks add into tensors they saved: keep copies

    return train_flow(factorize(build_flux(seed), RANK), predict, batch_fn, empty, steps, seed, "world-flux",
                      teacher=teacher, caption_dropout=CAPTION_DROPOUT, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_distill_arguments(parser, default_steps=2000, default_stop_after=1000)
    args = parser.parse_args(argv)
    return distill_from_world(args, paths.FLUX_WEIGHTS, "flux_training_log.json", "world-flux", FLUX_SEED_BASE, RANK,
                              lambda batch, empty, teacher, **options: train_flux(
                                  batch, empty, args.steps, seed=args.seed + 2, teacher=teacher, **options),
                              attention=use_fused_attention)


if __name__ == "__main__":
    sys.exit(main())
