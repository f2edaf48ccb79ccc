"""The interface every guidance target implements for the sampler, the rules and the report (READOUT_GUIDANCE is
a tuple of targets): what it reads, whether it needs a reference branch, its window, its losses, its scores."""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from ..backbones.base import Backbone
from ..backbones.cross_attention import AttentionStore


@dataclass(frozen=True)
class StepWindow:
    """Where a target acts, as fractions of the schedule (0 = first step, 1 = last), like ControlNet's percents."""

    start_percent: float = 0.0
    end_percent: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise ValueError(
                f"start_percent / end_percent: need 0 <= start <= end <= 1, got {self.start_percent} and {self.end_percent}"
            )


@dataclass
class Readings:
    """What one guided model call offers the targets: the backbone's readout features, the chosen tokens'
    cross-attention, the latent size, the timesteps, and how to run a head (backbone, model, autocast)."""

    features: list[torch.Tensor]
    attention: AttentionStore | None
    latent_size: tuple[int, int]
    timesteps: torch.Tensor
    backbone: Backbone
    diffusion_model: torch.nn.Module
    autocast: AbstractContextManager


@dataclass(frozen=True)
class Score:
    """One number about one target; `higher_is_better` says which way guidance should move it."""

    label: str
    value: float
    higher_is_better: bool

    @property
    def text(self) -> str:
        return f"{self.label}: {self.value:.4f} ({'higher' if self.higher_is_better else 'lower'} is better)"


class Target(ABC):
    """A guidance target; subclasses are frozen dataclasses with at least `weight` and `window`."""

    weight: float
    window: StepWindow
    relative: bool = False
    """Compares the edit with a reference branch's readout (KSampler (Readout Guidance) samples one)."""
    shares_reference_noise: bool = False
    """The edit starts from the reference branch's noise (a drag of the unguided image) rather than seed + 1."""
    has_official_loss: bool = False
    """Whether rule official (the official code's losses) can guide it."""

    @property
    @abstractmethod
    def label(self) -> str:
        """How messages and plots name the target."""

    def attention_tokens(self) -> tuple[int, ...]:
        """Prompt tokens whose cross-attention the target reads; none for targets that read heads."""
        return ()

    def drag_points(self) -> tuple[tuple, tuple[int, int]] | None:
        """The drag pairs it moves and the (height, width) of the image their pixels refer to (Draw Drag Points
        draws them); None for targets that are not drags."""
        return None

    @property
    def heads(self) -> tuple:
        """The readout heads it reads with (loaded to the device with the model)."""
        return ()

    @property
    def active(self) -> bool:
        """False when there is nothing to guide (a drag without points)."""
        return True

    def check_model(self, model_patcher, loss_branch: str) -> None:
        """Raise a ValueError naming the input when the target cannot guide this model or branch."""

    def check_latent_size(self, latent_size: tuple[int, int], latent_scale: int) -> None:
        """Raise a ValueError naming the input when its maps or points do not fit this latent (of `latent_scale` px a
        cell: the family's VAE)."""

    @abstractmethod
    def read(self, readings: Readings) -> torch.Tensor:
        """Its readout of one model call: a head's output or the words' attention, with autograd."""

    @abstractmethod
    def loss(self, edited: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) loss of the edited readout (relative targets: against the reference branch's readout)."""

    def official_loss(self, edited: torch.Tensor, reference: torch.Tensor | None, width: torch.Tensor) -> torch.Tensor:
        """The official code's loss (rule official); `width` is the VP latent's max - min."""
        raise ValueError(f"rule: official has no loss for {self.label}; the official code has only spatial, "
                         "appearance and drag guidance: use rule fast")

    def reads_with(self, head_name: str, kind: str) -> bool:
        """Whether a readout of this head file and kind is what this target reads (Readout Score)."""
        return False

    def scores(self, readout: torch.Tensor, reference: torch.Tensor | None) -> list[Score]:
        """Its scores of a readout (Readout Score)."""
        raise ValueError(f"guidance: cannot score {self.label} from a head's readout")


class HeadTarget(Target):
    """A target read by one readout head: its output on the model call's features."""

    head: object

    @property
    def heads(self) -> tuple:
        return (self.head,)

    def check_model(self, model_patcher, loss_branch: str) -> None:
        self.head.check_model(model_patcher)

    def read(self, readings: Readings) -> torch.Tensor:
        with readings.autocast:
            emb = readings.backbone.head_embedding(readings.diffusion_model, self.head.config, readings.timesteps)
            return self.head.read(readings.features, emb)

    def reads_with(self, head_name: str, kind: str) -> bool:
        return self.head.name == head_name and self.head.config.kind == kind
