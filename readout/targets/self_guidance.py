"""Self-Guidance targets (Epstein et al. 2023): properties of a prompt word's cross-attention map, no trained head.

A word's map A (B, 1, h, w) is the mean over its tokens of the decoder's attention probabilities. Properties:
centroid (attention-weighted mean position, x and y in [0, 1]), size (mean attention over the image), shape
(the map normalised by its maximum and soft-thresholded) and appearance (the last decoder layer's activations
pooled under the shape). Losses are L1 distances to the edited value; edits relative to the unguided image (or
to an inverted real image) read the reference branch sampled in the same batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbones.registry import BACKBONES, backbone_for
from .base import Readings, StepWindow, Target
from .reference import InvertedReference

SELF_GUIDANCE_EDITS = ("move_by", "move_to", "scale_size", "keep_shape", "keep_appearance")
SHAPE_THRESHOLD = 0.5
SHAPE_SHARPNESS = 10.0


def centroid(maps: torch.Tensor) -> torch.Tensor:
    """(B, 2) attention-weighted mean (x, y) of (B, 1, h, w) maps, pixel centres in [0, 1]."""
    height, width = maps.shape[-2:]
    weights = maps[:, 0] / maps[:, 0].sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    xs = (torch.arange(width, device=maps.device, dtype=maps.dtype) + 0.5) / width
    ys = (torch.arange(height, device=maps.device, dtype=maps.dtype) + 0.5) / height
    return torch.stack([(weights.sum(dim=-2) * xs).sum(dim=-1), (weights.sum(dim=-1) * ys).sum(dim=-1)], dim=-1)


def size(maps: torch.Tensor) -> torch.Tensor:
    """(B,) attention mass: the mean of each map over the image."""
    return maps.flatten(1).mean(dim=1)


def shape(maps: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) the maps over their maximum, soft-thresholded at half."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None, None]
    return torch.sigmoid(SHAPE_SHARPNESS * (maps / peak - SHAPE_THRESHOLD))


def appearance(maps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(B, C) activations (B, C, H, W) averaged under the maps' shape (resized to the activations)."""
    weights = F.interpolate(shape(maps), size=features.shape[-2:], mode="bilinear", align_corners=False)
    return (features.float() * weights).sum(dim=(-2, -1)) / weights.sum(dim=(-2, -1)).clamp_min(1e-6)


@dataclass(frozen=True)
class SelfGuidanceTarget(Target):
    """Edit one property of the words' attention: move by (dx, dy) or to a point (fractions of the image), scale
    the size by a factor, keep the shape or the appearance of the unguided image (or copy the appearance of an
    inverted real image, `reference`)."""

    words: str
    tokens: tuple[int, ...]
    family: str
    edit: str
    weight: float
    window: StepWindow
    offset: tuple[float, float] = (0.0, 0.0)
    point: tuple[float, float] = (0.5, 0.5)
    factor: float = 1.0
    reference: InvertedReference | None = None

    def __post_init__(self) -> None:
        if self.edit not in SELF_GUIDANCE_EDITS:
            raise ValueError(f"edit: use one of {', '.join(SELF_GUIDANCE_EDITS)}, got {self.edit!r}")
        if not self.tokens:
            raise ValueError(f"words: {self.words!r} has no tokens")

    def attention_tokens(self) -> tuple[int, ...]:
        return self.tokens

    @property
    def relative(self) -> bool:
        """Every edit but move_to compares with the unguided image (the reference branch)."""
        return self.edit != "move_to"

    @property
    def shares_reference_noise(self) -> bool:
        """The edit starts from the unguided image's noise; with a real reference, from its own."""
        return self.reference is None

    def read(self, readings: Readings) -> torch.Tensor:
        """What the loss compares: the word maps, or for keep_appearance the activations pooled under them."""
        maps = readings.attention.word_maps(self.tokens, *readings.latent_size)
        return appearance(maps, readings.features[-1]) if self.edit == "keep_appearance" else maps

    @property
    def label(self) -> str:
        return f"self-guidance {self.edit} {self.words!r}"

    def check_model(self, model_patcher, loss_branch: str) -> None:
        """The words must be tokenized by this model family's CLIP, and read from the prompt's (cond) half."""
        backbone = backbone_for(model_patcher)
        if not backbone.self_guidance:
            readable = ", ".join(b.label for b in BACKBONES if b.self_guidance)
            raise ValueError(f"model: self-guidance reads the prompt's attention of {readable} models; on "
                             f"{backbone.label} it is not supported yet: use a spatial, drag, appearance or identity "
                             "target")
        if not backbone.reads_prompt_of(self.family, model_patcher.model.diffusion_model):
            raise ValueError(f"clip: the words {self.words!r} were tokenized with an {self.family} CLIP but the "
                             f"model is {backbone.family}: connect the CLIP that encodes this model's prompt")
        if loss_branch != "cond":
            raise ValueError(f"loss_branch: self-guidance ({self.label}) reads the prompt's cross-attention; "
                             f"use cond, not {loss_branch}")

    def loss(self, edited: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) L1 distance of the edited readout's property to its goal."""
        if self.edit == "move_to":
            goal = torch.tensor(self.point, device=edited.device, dtype=edited.dtype).expand(edited.shape[0], 2)
            return (centroid(edited) - goal).abs().sum(dim=1)
        reference = reference.detach()
        if self.edit == "move_by":
            goal = centroid(reference) + torch.tensor(self.offset, device=edited.device, dtype=edited.dtype)
            return (centroid(edited) - goal).abs().sum(dim=1)
        if self.edit == "scale_size":
            return (size(edited) - self.factor * size(reference)).abs() / size(reference).clamp_min(1e-12)
        if self.edit == "keep_appearance":
            return (edited - reference).abs().mean(dim=1)
        return (shape(edited) - shape(reference)).abs().flatten(1).mean(dim=1)
