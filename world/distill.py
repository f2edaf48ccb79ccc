"""What the world's transformers share: weight matrices trained and stored as low-rank factors, the world's CLIP-L
conditioning, the SD1.5 world UNet as a flow-matching teacher, and the flow-matching loop that distills it."""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

FACTORS = (".factor_a", ".factor_b")
WORLD_CHANNELS = 4
"""The world's latent channels: a wider latent carries them first and zeros after."""


def init_for_training(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A ComfyUI transformer built without initialization, initialized to train: PyTorch's default init of its linear
    layers, its output layer and modulations zero (each block starts as the identity), its RMSNorm gains one."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.Linear.reset_parameters(module)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("final_layer.linear") or "adaLN_modulation" in name:
                param.zero_()
        for module in model.modules():
            if "RMSNorm" in type(module).__name__:  # its gain is `scale` (ComfyUI 0.3.75) or `weight` (0.33)
                for param in module.parameters():
                    param.fill_(1.0)
    return model


class LowRankLinear(torch.nn.Module):
    """A linear layer whose weight is the product factor_a @ factor_b (out x rank, rank x in)."""

    def __init__(self, dense: torch.nn.Linear, rank: int) -> None:
        super().__init__()
        weight = dense.weight.detach()
        if weight.abs().max() == 0:
            a, b = torch.zeros(weight.shape[0], rank), torch.randn(rank, weight.shape[1]) / weight.shape[1] ** 0.5
        else:
            u, s, vh = torch.linalg.svd(weight, full_matrices=False)
            a, b = u[:, :rank] * s[:rank].sqrt(), s[:rank].sqrt()[:, None] * vh[:rank]
        self.factor_a, self.factor_b = torch.nn.Parameter(a.contiguous()), torch.nn.Parameter(b.contiguous())
        self.bias = None if dense.bias is None else torch.nn.Parameter(dense.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.factor_a @ self.factor_b, self.bias)


def factorize(model: torch.nn.Module, rank: int, only: tuple[str, ...] = ()) -> torch.nn.Module:
    """Replace every linear layer that a rank-`rank` product stores in fewer numbers by a LowRankLinear (with `only`,
    those whose name starts with one of its prefixes or holds one of them after a dot)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f".{name}.{child_name}" if name else f".{child_name}"
            if only and not any(f".{part}" in full for part in only):
                continue
            if isinstance(child, torch.nn.Linear) and sum(child.weight.shape) * rank < child.weight.numel():
                setattr(module, child_name, LowRankLinear(child, rank))
    return model


def widen_tensor(value: torch.Tensor, target: torch.Size, chunks: int, tiles: int) -> torch.Tensor:
    """One tensor at the wide shape: a residual-wide output dimension tiled (chunk by chunk), a residual-wide input
    dimension tiled and divided by the tiles, a wider hidden dimension padded with zeros."""
    for axis, size in enumerate(target):
        have = value.shape[axis]
        if have == size:
            continue
        if size == have * tiles and axis == 0:
            value = torch.cat([part.repeat(tiles, *[1] * (value.dim() - 1)) for part in value.chunk(chunks, 0)], 0)
        elif size == have * tiles:
            value = value.repeat(1, tiles, *[1] * (value.dim() - 2)) / tiles
        else:
            pad = list(value.shape)
            pad[axis] = size - have
            value = torch.cat([value, value.new_zeros(pad)], axis)
    return value


def dense_state_dict(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense state dict ComfyUI loads, from stored weights with factored matrices (fp16)."""
    dense = {}
    for key, value in stored.items():
        if key.endswith(FACTORS[0]):
            base = key[: -len(FACTORS[0])]
            dense[f"{base}.weight"] = (value.float() @ stored[base + FACTORS[1]].float()).half()
        elif not key.endswith(FACTORS[1]):
            dense[key] = value.half()
    return dense


def caption_conditioning(captions: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each caption's (tokens (77, 768), pooled (768,)) as CLIPTextEncode gives them with the world's CLIP-L: the
    tokens by world.train's shortcut, the pooled vector as the end token's output; the first captions' pooled
    vectors are checked against ComfyUI's whole encode."""
    import comfy.sd

    from world.text_encoder import build_text_encoder
    from world.train import CHECKED_CAPTIONS, caption_contexts

    contexts = caption_contexts(captions)
    sd = {k: v.half() for k, v in build_text_encoder().state_dict().items() if "text_projection" not in k}
    clip = comfy.sd.load_text_encoder_state_dicts([sd], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    out = {}
    for caption in captions:
        ids = [token for token, _ in clip.tokenize(caption)["l"][0]]
        out[caption] = (contexts[caption], contexts[caption][ids.index(max(ids))])
    with torch.no_grad():
        for caption in captions[:CHECKED_CAPTIONS]:
            pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)[1][0].float()
            if not torch.allclose(pooled, out[caption][1], atol=1e-3):
                raise RuntimeError(f"the shortcut pooled vector of {caption!r} differs from ComfyUI's CLIPTextEncode")
    return out


def unet_teacher(unet: torch.nn.Module, cfg: float = 1.0, empty: torch.Tensor | None = None):
    """The SD1.5 world UNet as a flow-matching target: velocity(x_t, t, context) -> (target, valid) on the 4 world
    channels, where x_t = (1 - t) x0 + t noise is the same point as SD1.5's x = sqrt(abar) x0 + sqrt(1 - abar) noise
    scaled by 1 / sqrt((1 - t)^2 + t^2); valid is False where abar is below the UNet's last timestep. With cfg above
    1 the UNet's noise estimate is classifier-free guided against the `empty` caption's context."""
    from world.unet import sd15_alphas_cumprod

    ascending = sd15_alphas_cumprod().flip(0)

    def velocity(xt: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = xt.shape[0]
        norm = ((1 - t) ** 2 + t**2).sqrt()
        abar = ((1 - t) / norm) ** 2
        upper = torch.searchsorted(ascending, abar).clamp(1, len(ascending) - 1)
        low, high = ascending[upper - 1], ascending[upper]
        index = (upper - 1) + ((abar - low) / (high - low)).clamp(0, 1)
        timestep = (len(ascending) - 1) - index
        x = xt / norm.view(b, 1, 1, 1)
        with torch.no_grad():
            if cfg == 1.0:
                eps = unet(x, timesteps=timestep, context=context)
            else:
                both = unet(torch.cat([x, x]), timesteps=torch.cat([timestep, timestep]),
                            context=torch.cat([context, empty.expand_as(context)]))
                conditional, unconditional = both.chunk(2)
                eps = unconditional + cfg * (conditional - unconditional)
        a = abar.view(b, 1, 1, 1)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return eps - x0, abar >= ascending[0]

    return velocity


def uniform_times(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Flow times drawn uniformly in [0, 1]."""
    return torch.rand(batch, generator=gen)


def train_flow(model: torch.nn.Module, predict: Callable, batch_fn: Callable, empty: tuple[torch.Tensor, torch.Tensor],
               steps: int, seed: int, tag: str, teacher=None, times: Callable = uniform_times,
               caption_dropout: float = 0.0, stop_after: int | None = None, lr: float = 1e-3, warmup: int = 100,
               ema_decay: float = 0.999, log_every: int = 50, snapshot=None, snapshot_every: int = 0,
               edit_every: int = 0) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Flow matching: x_t = (1 - t) x0 + t noise, `predict(model, x_t, t, context, pooled)` estimates noise - x0
    (ComfyUI's CONST parameterization); with a teacher, its velocity replaces noise - x0 on the world channels where
    it is valid. With `edit_every`, every such step is an edit step instead: `predict` also gets `reference=x0` (the
    clean latent, as an edit model's reference image) and the target is noise - x0 itself. The learning rate follows
    a cosine over `steps`; training ends after `stop_after` of them when given. Returns the EMA weights and the
    per-step losses."""
    from world.unet import EMA, optimizer_step, schedule

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    ema = EMA(model, ema_decay)
    gen = torch.Generator().manual_seed(seed + 1)
    losses, start = [], time.time()
    for step in range(stop_after or steps):
        x0, context, pooled = batch_fn(step)
        b = x0.shape[0]
        drop = torch.rand(b, generator=gen) < caption_dropout
        context = torch.where(drop[:, None, None], empty[0].expand_as(context), context)
        pooled = torch.where(drop[:, None], empty[1].expand_as(pooled), pooled)
        t = times(b, gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - t.view(b, 1, 1, 1)) * x0 + t.view(b, 1, 1, 1) * noise
        target = noise - x0
        edit = bool(edit_every) and step % edit_every == edit_every - 1
        if teacher is not None and not edit:
            taught, valid = teacher(xt[:, :WORLD_CHANNELS], t, context)
            target[:, :WORLD_CHANNELS] = torch.where(valid.view(b, 1, 1, 1), taught, target[:, :WORLD_CHANNELS])
        loss = F.mse_loss(predict(model, xt, t, context, pooled, **({"reference": x0} if edit else {})), target)
        optimizer_step(model, opt, ema, loss, lr * schedule(step, steps, warmup))
        losses.append(float(loss.detach()))
        if snapshot_every and snapshot and (step + 1) % snapshot_every == 0:
            snapshot(step + 1, ema.shadow, losses)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"[{tag}] step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    return ema.shadow, losses


def add_distill_arguments(parser: argparse.ArgumentParser, default_steps: int, default_stop_after: int) -> None:
    """The command-line options every world transformer's training takes."""
    from world import paths

    parser.add_argument("--steps", type=int, default=default_steps, help="the learning-rate schedule's length")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=paths.WEIGHTS_DIR)
    parser.add_argument("--snapshot-every", type=int, default=250, help="write the EMA weights every N steps too")
    parser.add_argument("--stop-after", type=int, default=default_stop_after,
                        help=f"end after this many of the schedule's steps (the committed weights: {default_stop_after})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads (1 when other work shares the cores: waiting threads stall each step)")


def distill_from_world(args: argparse.Namespace, weights_file: str, log_file: str, tag: str, seed_base: int,
                       rank: int, train: Callable, attention: Callable, teacher_cfg: float = 1.0) -> int:
    """Train a world transformer on the world's scenes and captions with the SD1.5 world UNet as teacher (its
    estimate classifier-free guided at `teacher_cfg`), writing its fp16 factored weights and a log into args.out.
    `train(batch_fn, empty, teacher, stop_after=, snapshot=, snapshot_every=)` returns the EMA weights and losses."""
    from world import paths

    paths.import_comfyui()
    import comfy.model_management

    comfy.model_management.in_training = True  # ComfyUI 0.33+: kernels with a backward (rotary embeddings)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from safetensors.torch import load_file, save_file

    from world.autoencoder import encode_patches, scene_batch
    from world.flux import widen_latents
    from world.scenes import all_captions, random_scene
    from world.train import use_fused_attention as use_fused_unet_attention
    from world.unet import UNET_CONFIG, build_unet

    vae = load_file(os.path.join(paths.WEIGHTS_DIR, paths.VAE_FILE))
    weight, mean = vae["patch_weight"].float(), vae["patch_mean"].float()
    attention()
    use_fused_unet_attention()
    conditioning = caption_conditioning(all_captions() + [""])
    started = time.time()

    def batch(step: int):
        seeds = range(seed_base * (args.seed + 1) + step * args.batch, seed_base * (args.seed + 1) + (step + 1) * args.batch)
        latents = widen_latents(encode_patches(scene_batch(seeds), weight, mean))
        pairs = [conditioning[random_scene(s).caption] for s in seeds]
        return latents, torch.stack([c for c, _ in pairs]), torch.stack([p for _, p in pairs])

    def write(step: int, ema: dict[str, torch.Tensor], losses: list[float]) -> None:
        save_file({k: v.half().contiguous() for k, v in ema.items()}, os.path.join(args.out, weights_file),
                  metadata={"steps": str(step), "schedule_steps": str(args.steps), "batch": str(args.batch),
                            "seed": str(args.seed), "rank": str(rank)})
        log = {"loss_first": losses[0], "loss_last": float(np.mean(losses[-20:])), "step": step,
               "seconds": round(time.time() - started), "args": vars(args)}
        with open(os.path.join(args.out, log_file), "w", encoding="utf-8") as f:
            json.dump(log, f, indent=1)

    unet = build_unet(UNET_CONFIG)
    unet.load_state_dict({k: v.float() for k, v in load_file(os.path.join(paths.WEIGHTS_DIR, paths.UNET_FILE)).items()})
    unet.eval()
    teacher = unet_teacher(unet, teacher_cfg, conditioning[""][0])
    ema, losses = train(batch, conditioning[""], teacher, stop_after=args.stop_after, snapshot=write,
                        snapshot_every=args.snapshot_every)
    write(len(losses), ema, losses)
    print(f"[{tag}] done in {time.time() - started:.0f} s, loss {losses[0]:.4f} -> {np.mean(losses[-20:]):.4f}",
          flush=True)
    return 0
