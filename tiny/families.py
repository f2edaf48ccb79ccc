"""Tiny models of the families users sample with in late 2026 (Flux.2, Z-Image's NextDiT, Qwen-Image), built with
ComfyUI 0.33's own modules at the smallest size its detection (comfy/model_detection.py) sizes from a state dict,
for UNETLoader (diffusion_models/).

- Flux.2: 256 wide (two heads of 128), one double- and one single-stream block; it reads CLIP-L's 768-d tokens,
  as detection takes txt_in's width from the weights. 0.3.75 detects Flux.2 only at 48 heads (6144 wide).
- NextDiT: detection fixes heads and rotary axes by width, and ZImage is the 3840-wide config (177M parameters a
  layer), so the tiny one is the 2304-wide Lumina 2 config, the class ZImage subclasses, with one main layer and the
  two noise and two caption refiners every NextDiT has; it reads CLIP-L's tokens (cap_embedder is sized from them).
- Krea 2: 256 wide (two heads of 128), four blocks, a two-layer 160-wide text fusion; its text encoder (Qwen3-VL
  4B) is not tiny, so its tests give it CONDITIONING of its width built directly. 0.3.75 has no Krea 2.
- Qwen-Image: detection fixes the width (3072) and the text width (3584), so the tiny one is one block deep; no
  CLIP reads 3584-wide, so its tests give it CONDITIONING of that width built directly (text_conditioning), as they
  do the NextDiT (a few tokens are cheaper than CLIP's 77 through its 423M parameters).
"""
from __future__ import annotations

import torch

from tiny.dit import _tame_modulation
from tiny.parts import TINY_SEED, generator, half_state_dict, init_weights

TINY_FLUX2 = "readout_tiny_flux2.safetensors"
TINY_LUMINA2 = "readout_tiny_lumina2.safetensors"
TINY_QWEN_IMAGE = "readout_tiny_qwen_image.safetensors"
TINY_KREA2 = "readout_tiny_krea2.safetensors"
TAEF2 = "taef2"
"""Flux.2's tiny autoencoder as VAELoader lists it: the pair taef2_encoder / taef2_decoder in vae_approx/."""
DETECTED_SINCE = (0, 33, 0)
"""The first ComfyUI release the pack tests whose detection sizes these tiny models (0.3.75 fixes Flux.2's heads)."""
QWEN_TEXT_WIDTH = 3584
"""The width of Qwen2.5-VL 7B's hidden states, which Qwen-Image's txt_norm fixes."""

TINY_FLUX2_CONFIG = {
    "in_channels": 128, "out_channels": 128, "vec_in_dim": None, "context_in_dim": 768, "hidden_size": 256,
    "mlp_ratio": 3.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [32, 32, 32, 32],
    "theta": 2000, "patch_size": 1, "qkv_bias": False, "guidance_embed": True, "txt_ids_dims": [3],
    "global_modulation": True, "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index",
    "ref_index_scale": 10.0,
}
TINY_LUMINA2_CONFIG = {
    "patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": 768, "n_layers": 1, "qk_norm": True,
    "n_heads": 24, "n_kv_heads": 8, "axes_dims": [32, 32, 32], "axes_lens": [300, 512, 512], "rope_theta": 10000.0,
    "ffn_dim_multiplier": 4.0,
}
TINY_QWEN_IMAGE_CONFIG = {"in_channels": 64, "num_layers": 1}
TINY_KREA2_CONFIG = {"features": 256, "heads": 2, "kvheads": 2, "layers": 4, "patch": 2, "channels": 16,
                     "txtlayers": 2, "txtdim": 160}
"""Krea 2 sizes everything from its weights but the text fusion's 20 heads (so 160 wide: 8 channels a head)."""
KREA2_TEXT_WIDTH = TINY_KREA2_CONFIG["txtlayers"] * TINY_KREA2_CONFIG["txtdim"]
"""The width of the tiny Krea 2's conditioning: its text layers' hidden states side by side."""


def build_flux2(seed: int = TINY_SEED) -> torch.nn.Module:
    """The tiny Flux.2 (guidance-embedded like dev) as ComfyUI's own Flux module."""
    from comfy.ldm.flux.model import Flux
    import comfy.ops

    model = Flux(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu", **TINY_FLUX2_CONFIG)
    init_weights(model, seed)
    _tame_modulation(model)
    return model


def build_lumina2(seed: int = TINY_SEED) -> torch.nn.Module:
    """The tiny NextDiT (Lumina 2's configuration) as ComfyUI's own module."""
    from comfy.ldm.lumina.model import NextDiT
    import comfy.ops

    model = NextDiT(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu",
                    **TINY_LUMINA2_CONFIG)
    init_weights(model, seed)
    _tame_modulation(model)
    return model


def build_qwen_image(seed: int = TINY_SEED) -> torch.nn.Module:
    """The tiny Qwen-Image MMDiT as ComfyUI's own module."""
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
    import comfy.ops

    model = QwenImageTransformer2DModel(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu",
                                        **TINY_QWEN_IMAGE_CONFIG)
    init_weights(model, seed)
    _tame_modulation(model)
    return model


def build_krea2(seed: int = TINY_SEED) -> torch.nn.Module:
    """The tiny Krea 2 single-stream DiT as ComfyUI's own module; its per-block modulation offsets (vectors, which
    init_weights fills with ones) small."""
    from comfy.ldm.krea2.model import SingleStreamDiT
    import comfy.ops

    model = SingleStreamDiT(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu",
                            **TINY_KREA2_CONFIG)
    init_weights(model, seed)
    _tame_modulation(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".lin"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator(seed + 1)))
    return model


def tiny_taef2_state_dicts(seed: int = TINY_SEED) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The encoder and decoder of a 128-channel TAESD (Flux.2's latent), random weights: VAELoader's "taef2"."""
    from comfy.taesd.taesd import TAESD

    taesd = TAESD(latent_channels=128)
    init_weights(taesd, seed + 37)
    return (half_state_dict(taesd.taesd_encoder, ""), half_state_dict(taesd.taesd_decoder, ""))


def tiny_flux2_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    return half_state_dict(build_flux2(seed + 33), "")


def tiny_lumina2_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    return half_state_dict(build_lumina2(seed + 34), "")


def tiny_qwen_image_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    return half_state_dict(build_qwen_image(seed + 35), "")


def tiny_krea2_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    return half_state_dict(build_krea2(seed + 36), "")


def text_conditioning(text: str, width: int, tokens: int = 8) -> list:
    """CONDITIONING of a text width for a prompt, deterministic per text: what the family's text encoder (Qwen2.5-VL,
    Qwen3) would hand over, random here as the tiny models' weights are, and short, as the tiny models are cheap."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(text)) % (2 ** 31)
    hidden = torch.randn(1, tokens, width, generator=generator(seed))
    return [[hidden, {}]]
