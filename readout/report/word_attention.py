"""A prompt word's cross-attention map in a sampled latent: one model pass on it noised, as Self-Guidance reads it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backbones.evaluation import hooked_evaluation, seeded_noise
from ..targets.self_guidance import SelfGuidanceTarget, centroid


@dataclass(frozen=True)
class WordCheck:
    """The words' maps in the images, their centroids, the edit's goal (None: not a position) and its loss."""

    maps: torch.Tensor
    centroids: torch.Tensor
    goals: torch.Tensor | None
    losses: torch.Tensor


def word_maps(model_patcher, latent: torch.Tensor, conditioning: list, tokens: tuple[int, ...],
              timestep: int, seed: int) -> torch.Tensor:
    """(B, 1, h, w): the mean cross-attention of the tokens over each (raw) latent noised to `timestep`."""
    reading = hooked_evaluation(model_patcher, latent, torch.tensor([float(timestep)]), seeded_noise(latent, seed),
                                conditioning, features=False, tokens=tokens, seed=seed)
    return reading.attention.word_maps(tokens, reading.x.shape[-2], reading.x.shape[-1]).float().cpu()


def check_edit(target: SelfGuidanceTarget, maps: torch.Tensor, unguided: torch.Tensor | None) -> WordCheck:
    """Score maps against a Self-Guidance edit; relative edits compare with the unguided image's maps."""
    if target.edit == "keep_appearance":
        raise ValueError("guidance: keep_appearance compares activations, not attention maps: check a move_by, "
                         "move_to, scale_size or keep_shape edit")
    if target.relative and unguided is None:
        raise ValueError(f"unguided_samples: {target.edit} is measured from the unguided latent; connect the "
                         "latent sampled from the same seed without guidance (the guided sampler's reference output)")
    if unguided is not None and unguided.shape[0] not in (1, maps.shape[0]):
        raise ValueError(f"unguided_samples: it holds {unguided.shape[0]} latents for {maps.shape[0]} in samples; "
                         "connect one latent, or as many as samples")
    reference = None if unguided is None else unguided.expand_as(maps)
    centroids = centroid(maps)
    goals = None
    if target.edit == "move_to":
        goals = torch.tensor(target.point).expand_as(centroids)
    elif target.edit == "move_by":
        goals = centroid(reference) + torch.tensor(target.offset)
    return WordCheck(maps, centroids, goals, target.loss(maps, reference))
