"""`python -m world.train`: fit the patch encoder, train the decoder and the narrow UNet on fresh scenes, and write
the fp16 weights into world/weights/ (what the setup assembles into a ComfyUI checkpoint)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from world import paths

PCA_SEEDS = range(0, 400)
UNET_SEED_BASE = 10**7


CHECKED_CAPTIONS = 3


def caption_contexts(captions: list[str]) -> dict[str, torch.Tensor]:
    """Each caption as CLIPTextEncode gives it, from ComfyUI's own CLIP loader, tokenizer and embedding layers.
    The encoder's layers are exact identities (zero residual branches), so only the embeddings and the final
    LayerNorm are run; the first captions are checked against ComfyUI's whole encode."""
    import comfy.sd

    from world.text_encoder import build_text_encoder

    sd = {k: v.half() for k, v in build_text_encoder().state_dict().items() if "text_projection" not in k}
    clip = comfy.sd.load_text_encoder_state_dicts([sd], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    text_model = clip.cond_stage_model.clip_l.transformer.text_model
    out = {}
    with torch.no_grad():
        for caption in captions:
            ids = torch.tensor([[token for token, _ in clip.tokenize(caption)["l"][0]]])
            out[caption] = text_model.final_layer_norm(text_model.embeddings(ids, dtype=torch.float32))[0].float()
    for caption in captions[:CHECKED_CAPTIONS]:
        full = clip.encode_from_tokens(clip.tokenize(caption)).float()[0]
        if not torch.allclose(full, out[caption], atol=1e-3):
            raise RuntimeError(f"the shortcut encoding of {caption!r} differs from ComfyUI's CLIPTextEncode")
    return out


def use_fused_attention() -> None:
    """Training only: PyTorch's fused attention (ComfyUI picks a slower one on CPUs); the maths is the same."""
    import comfy.ldm.modules.attention as attention

    attention.optimized_attention = attention.attention_pytorch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--unet-steps", type=int, default=1100)
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--decoder-steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=paths.WEIGHTS_DIR)
    parser.add_argument("--reuse-decoder", action="store_true", help="keep the decoder already in --out")
    parser.add_argument("--snapshot-every", type=int, default=0, help="also write the UNet's EMA every N steps")
    args = parser.parse_args(argv)
    paths.import_comfyui()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from safetensors.torch import save_file

    from world.autoencoder import encode_patches, fit_patch_encoder, scene_batch, train_decoder
    from world.scenes import all_captions, random_scene
    from world.unet import train_unet

    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    weight, mean = fit_patch_encoder(PCA_SEEDS)
    decoder_losses: list[float] = []
    if not args.reuse_decoder:
        decoder, decoder_losses = train_decoder(weight, mean, args.decoder_steps, seed=args.seed + 1)
        vae = {"patch_weight": weight, "patch_mean": mean, **{f"decoder.{k}": v for k, v in decoder.items()}}
        save_file({k: v.half().contiguous() for k, v in vae.items()}, os.path.join(args.out, paths.VAE_FILE),
                  metadata={"steps": str(args.decoder_steps), "seed": str(args.seed)})
    use_fused_attention()
    contexts = caption_contexts(all_captions() + [""])

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        seeds = range(UNET_SEED_BASE * (args.seed + 1) + step * args.unet_batch,
                      UNET_SEED_BASE * (args.seed + 1) + (step + 1) * args.unet_batch)
        latents = encode_patches(scene_batch(seeds), weight, mean)
        return latents, torch.stack([contexts[random_scene(s).caption] for s in seeds])

    def snapshot(step: int, ema: dict[str, torch.Tensor]) -> None:
        save_file({k: v.half().contiguous() for k, v in ema.items()}, os.path.join(args.out, f"snapshot_{step}.safetensors"))

    unet, unet_losses = train_unet(batch, contexts[""], args.unet_steps, seed=args.seed + 2,
                                   snapshot_every=args.snapshot_every, snapshot=snapshot)
    save_file({k: v.half().contiguous() for k, v in unet.items()}, os.path.join(args.out, paths.UNET_FILE),
              metadata={"steps": str(args.unet_steps), "batch": str(args.unet_batch), "seed": str(args.seed)})
    log = {"decoder_loss_first": decoder_losses[0] if decoder_losses else None,
           "decoder_loss_last": sum(decoder_losses[-20:]) / len(decoder_losses[-20:]) if decoder_losses else None,
           "unet_loss_first": unet_losses[0], "unet_loss_last": sum(unet_losses[-20:]) / len(unet_losses[-20:]),
           "seconds": round(time.time() - started), "args": vars(args)}
    with open(os.path.join(args.out, "training_log.json"), "w", encoding="utf-8") as f:
        json.dump(log, f, indent=1)
    print(f"[world] done in {log['seconds']} s: {json.dumps(log)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
