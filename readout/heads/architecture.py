"""Readout heads: per-layer bottleneck blocks on UNet decoder features, learned mixing, optional output head.

The layout matches the official `AggregationNetwork` key for key, so released state dicts load strictly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..backbones.registry import FAMILIES

HEAD_KINDS = ("pose", "depth", "edge", "correspondence", "appearance", "identity")
SPATIAL_KINDS = ("pose", "depth", "edge")
MODEL_FAMILIES = tuple(FAMILIES)
FAMILY_LABELS = {family: backbone.label for family, backbone in FAMILIES.items()}
DEFAULT_CONTROL_RANGES = {"pose": (-0.5, 0.5), "edge": (-0.5, 0.5), "depth": (-1.0, 1.0)}
"""The released spatial heads' control ranges: sparse pose/edge maps +-0.5, depth +-1."""
NUM_NORM_GROUPS = 32
OUTPUT_HEAD_HIDDEN = (128, 32)


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"head config field {name!r} must be a string, got {value!r}")
    return value


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"head config field {name!r} must be an integer, got {value!r}")
    return value


def _check_positive_int(name: str, value: Any) -> int:
    if _check_int(name, value) <= 0:
        raise ValueError(f"head config field {name!r} must be positive, got {value!r}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"head config field {name!r} must be true or false, got {value!r}")
    return value


def _check_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"head config field {name!r} must be a non-empty list of integers, got {value!r}")
    return tuple(_check_int(name, item) for item in value)


def _check_positive_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    return tuple(_check_positive_int(name, item) for item in _check_int_tuple(name, value))


def _check_range(name: str, value: Any) -> tuple[float, float]:
    numbers = isinstance(value, (list, tuple)) and all(
        isinstance(item, (int, float)) and not isinstance(item, bool) for item in value
    )
    if not numbers or len(value) != 2 or not value[0] < value[1]:
        raise ValueError(f"head config field {name!r} must be [low, high] with low < high, got {value!r}")
    return (float(value[0]), float(value[1]))


def _check_choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if _check_str(name, value) not in choices:
            raise ValueError(f"head config field {name!r} must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


_FIELD_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "kind": _check_choice(HEAD_KINDS),
    "family": _check_choice(MODEL_FAMILIES),
    "dims": _check_positive_int_tuple,
    "projection_dim": _check_positive_int,
    "num_timesteps": _check_positive_int,
    "save_timestep": _check_int_tuple,
    "use_output_head": _check_bool,
    "output_head_channels": _check_positive_int,
    "output_head_act": _check_bool,
    "bottleneck_sequential": _check_bool,
    "use_emb": _check_bool,
    "emb_dim": _check_positive_int,
    "control_range": _check_range,
    "sparse_loss": _check_bool,
    "reverse_timestep": _check_bool,
}


@dataclass(frozen=True)
class HeadConfig:
    """What a readout head reads (model family, decoder layer channels) and how it is built and used."""

    kind: str
    family: str
    dims: tuple[int, ...]
    projection_dim: int = 384
    num_timesteps: int = 1000
    save_timestep: tuple[int, ...] = (0,)
    use_output_head: bool = False
    output_head_channels: int = 3
    output_head_act: bool = True
    bottleneck_sequential: bool = False
    use_emb: bool = True
    emb_dim: int = 1280
    control_range: tuple[float, float] = (-1.0, 1.0)
    sparse_loss: bool = False
    reverse_timestep: bool = False

    def __post_init__(self) -> None:
        """Validate every field (naming the bad one) and normalise lists to tuples."""
        for name, check in _FIELD_CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        if self.projection_dim % (4 * NUM_NORM_GROUPS):
            raise ValueError(
                f"head config field 'projection_dim' must be a multiple of {4 * NUM_NORM_GROUPS} "
                f"(GroupNorm({NUM_NORM_GROUPS}) on projection_dim // 4 channels), got {self.projection_dim}"
            )
        if self.is_spatial and not (self.use_output_head and self.output_head_channels == 3):
            raise ValueError(
                f"a {self.kind} head needs a 3-channel output head (use_output_head true, output_head_channels 3)"
            )
        if self.bottleneck_sequential and self.use_emb:
            raise ValueError("head config field 'use_emb' must be false when 'bottleneck_sequential' is true")

    @property
    def is_spatial(self) -> bool:
        """True for pose/depth/edge heads, whose readout is an image-aligned 3-channel map."""
        return self.kind in SPATIAL_KINDS

    @property
    def num_layers(self) -> int:
        """Number of decoder layers the head reads."""
        return len(self.dims)

    @property
    def readout_channels(self) -> int:
        """Channels of the readout: the output head's channels, else the mixed feature map's."""
        return self.output_head_channels if self.use_output_head else self.projection_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Any) -> HeadConfig:
        """Build from `to_dict` output; a ValueError names any unknown, missing or invalid field."""
        if not isinstance(data, dict):
            raise ValueError(f"head config must be a dict of fields, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELD_CHECKS))
        if unknown:
            raise ValueError(f"unknown head config field(s): {', '.join(map(repr, unknown))}")
        missing = [name for name in ("kind", "family", "dims") if name not in data]
        if missing:
            raise ValueError(f"head config is missing field(s): {', '.join(map(repr, missing))}")
        return cls(**data)


class ConvNorm(nn.Module):
    """Bias-free square convolution followed by GroupNorm (state dict keys `weight`, `norm.weight`, `norm.bias`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.norm = nn.GroupNorm(NUM_NORM_GROUPS, out_channels)
        self.padding = kernel_size // 2
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve (same padding) and normalise."""
        return self.norm(F.conv2d(x, self.weight, padding=self.padding))


class BottleneckBlock(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1 with GroupNorm) with the timestep embedding added after the first conv."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int) -> None:
        super().__init__()
        bottleneck_channels = out_channels // 4
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1)
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3)
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1)
        self.shortcut = ConvNorm(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.emb_layers = nn.Linear(emb_dim, bottleneck_channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """relu(conv1) [+ relu(linear(emb))] -> relu(conv2) -> conv3, plus the shortcut, then relu."""
        out = F.relu(self.conv1(x))
        if emb is not None:
            out = out + F.relu(self.emb_layers(emb))[:, :, None, None]
        out = self.conv3(F.relu(self.conv2(out)))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ReadoutHead(nn.Module):
    """Turns one UNet evaluation's decoder features into a readout (a 3-channel map or a feature map)."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        blocks = [BottleneckBlock(dim, config.projection_dim, config.emb_dim) for dim in config.dims]
        self.bottleneck_layers = nn.ModuleList(
            nn.Sequential(block) if config.bottleneck_sequential else block for block in blocks
        )
        self.mixing_weights = nn.Parameter(torch.ones(config.num_layers * len(config.save_timestep)))
        self.output_head = self._build_output_head(config) if config.use_output_head else None

    @staticmethod
    def _build_output_head(config: HeadConfig) -> nn.Sequential:
        hidden, narrow = OUTPUT_HEAD_HIDDEN
        layers: list[nn.Module] = [
            nn.Conv2d(config.projection_dim, hidden, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, narrow, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.Conv2d(narrow, config.output_head_channels, kernel_size=1),
        ]
        if config.output_head_act:
            layers.append(nn.Tanh())
        return nn.Sequential(*layers)

    def _check_inputs(self, features: Sequence[torch.Tensor], emb: torch.Tensor | None) -> None:
        config = self.config
        if len(config.save_timestep) != 1:
            raise ValueError(
                f"this head mixes features from {len(config.save_timestep)} timesteps "
                f"(save_timestep={list(config.save_timestep)}); only single-timestep heads are supported"
            )
        if len(features) != config.num_layers:
            raise ValueError(
                f"head expects {config.num_layers} feature maps (one per decoder layer), got {len(features)}"
            )
        channels = [feature.shape[1] if feature.ndim == 4 else None for feature in features]
        if channels != list(config.dims):
            raise ValueError(
                f"head expects (B, C, H, W) features with channels {list(config.dims)}, "
                f"got shapes {[tuple(feature.shape) for feature in features]}"
            )
        batch = features[0].shape[0]
        if any(feature.shape[0] != batch for feature in features):
            raise ValueError(f"feature maps disagree on batch size: {[feature.shape[0] for feature in features]}")
        if self._uses_emb and (emb is None or emb.ndim != 2 or emb.shape[0] not in (1, batch)):
            shape = None if emb is None else tuple(emb.shape)
            raise ValueError(
                f"this head is conditioned on the UNet timestep embedding: pass emb of shape "
                f"({batch} or 1, {config.emb_dim}), got {shape}"
            )

    @property
    def _uses_emb(self) -> bool:
        return self.config.use_emb and not self.config.bottleneck_sequential

    def forward(
        self,
        features: Sequence[torch.Tensor],
        emb: torch.Tensor | None = None,
        output_size: tuple[int, int] | None = None,
        checkpoint_layers: bool = False,
    ) -> torch.Tensor:
        """Mix per-layer features of any sizes, resized bilinearly to `output_size` (default: the largest map).

        `emb` (B or 1, emb_dim) is needed if the head uses the timestep embedding; inputs take the head's dtype.
        `checkpoint_layers`: keep only each layer's input for the backward and recompute its share there, one layer
        at a time (the guided pass's memory: one resized layer instead of all of them).
        """
        self._check_inputs(features, emb)
        dtype = self.mixing_weights.dtype
        if output_size is None:
            output_size = max((tuple(feature.shape[-2:]) for feature in features), key=lambda hw: hw[0] * hw[1])
        size = (int(output_size[0]), int(output_size[1]))
        emb = emb.to(dtype) if self._uses_emb else None
        weights = torch.softmax(self.mixing_weights, dim=0)
        mixed = None
        for index, (layer, feature) in enumerate(zip(self.bottleneck_layers, features)):
            term = partial(_weighted_layer, layer, dict(layer.named_parameters()), size,
                           self.config.bottleneck_sequential)
            args = (feature.to(dtype), emb, weights[index])
            out = checkpoint(term, *args, use_reentrant=False) if checkpoint_layers else term(*args)
            mixed = out if mixed is None else mixed + out
        if self.output_head is None:
            return mixed
        if checkpoint_layers:
            head = partial(torch.func.functional_call, self.output_head, dict(self.output_head.named_parameters()))
            return checkpoint(head, (mixed,), use_reentrant=False)
        return self.output_head(mixed)


def _weighted_layer(layer: nn.Module, params: dict[str, torch.Tensor], size: tuple[int, int], sequential: bool,
                    feature: torch.Tensor, emb: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
    """One decoder layer's share of the mixed map: resized, through its bottleneck block with `params` (the ones of
    the forward, also when the backward recomputes it), times its mixing weight."""
    if tuple(feature.shape[-2:]) != size:
        feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
    return weight * torch.func.functional_call(layer, params, (feature,) if sequential else (feature, emb))
