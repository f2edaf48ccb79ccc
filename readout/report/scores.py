"""A readout scored against the targets that guided it: the targets' own losses, and similarity at drag points."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..heads.readouts import Readout
from ..targets.relative import AppearanceTarget, CorrespondenceTarget, sample_points, similarity
from ..targets.spatial import SpatialTarget


@dataclass(frozen=True)
class Score:
    """One number about one target; `higher_is_better` says which way guidance should move it."""

    label: str
    value: float
    higher_is_better: bool

    @property
    def text(self) -> str:
        return f"{self.label}: {self.value:.4f} ({'higher' if self.higher_is_better else 'lower'} is better)"


def targets_read_by(readout: Readout, guidance: tuple) -> list:
    """The targets of a guidance chain whose head made this readout (same file name and kind)."""
    return [t for t in guidance if getattr(t, "head", None) is not None
            and t.head.name == readout.head_name and t.head.config.kind == readout.config.kind]


def point_similarities(readout: torch.Tensor, reference: torch.Tensor, target: CorrespondenceTarget) -> list[float]:
    """Per drag pair: similarity in [0, 1] of the reference's features at the source and the readout's at the target."""
    sources = torch.tensor([p.source for p in target.pairs])
    goals = torch.tensor([p.target for p in target.pairs])
    anchor = sample_points(reference.float(), sources, target.image_size)
    moved = sample_points(readout.float(), goals, target.image_size)
    return similarity(anchor, moved).mean(dim=0).tolist()


def score_target(target, readout: Readout, reference: Readout | None) -> list[Score]:
    """The scores of one target: spatial loss, appearance distance, or similarity at each drag target point."""
    if isinstance(target, SpatialTarget):
        return [Score(f"{target.head.config.kind} loss", float(target.loss(readout.tensor).mean()), False)]
    if reference is None:
        raise ValueError(f"reference: the {target.label} target compares with a reference; connect the "
                         "ExtractReadout of the reference image (same head)")
    if reference.head_name != readout.head_name:
        raise ValueError(f"reference: it was read with {reference.head_name!r}, readout with {readout.head_name!r}; "
                         "read both with the same head")
    if reference.tensor.shape[-2:] != readout.tensor.shape[-2:]:
        raise ValueError("reference: its readout has another size than readout; read images of the same size")
    if isinstance(target, CorrespondenceTarget):
        values = point_similarities(readout.tensor, reference.tensor, target)
        return [Score(f"similarity at target {i + 1}", v, True) for i, v in enumerate(values)]
    if isinstance(target, AppearanceTarget):
        return [Score(f"{target.role} distance", float(target.loss(readout.tensor, reference.tensor).mean()), False)]
    raise ValueError(f"guidance: cannot score a {type(target).__name__}")


def score_readout(readout: Readout, guidance: tuple, reference: Readout | None = None) -> list[Score]:
    """Every score of the targets in `guidance` that read with the readout's head."""
    targets = targets_read_by(readout, guidance)
    if not targets:
        raise ValueError(f"guidance: no target in it uses the head {readout.head_name!r} that made readout; connect "
                         "the readout of a head the guidance uses")
    return [score for target in targets for score in score_target(target, readout, reference)]
