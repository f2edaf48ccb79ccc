"""A readout scored against the targets that guided it: each target's own scores (losses, similarity at drag points)."""
from __future__ import annotations

from ..heads.readouts import Readout
from ..targets.base import Score


def targets_read_by(readout: Readout, guidance: tuple) -> list:
    """The targets of a guidance chain whose head made this readout (same file name and kind)."""
    return [t for t in guidance if t.reads_with(readout.head_name, readout.config.kind)]


def score_target(target, readout: Readout, reference: Readout | None) -> list[Score]:
    """The scores of one target; relative targets need the reference's readout by the same head, of the same size."""
    if not target.relative:
        return target.scores(readout.tensor, None)
    if reference is None:
        raise ValueError(f"reference: the {target.label} target compares with a reference; connect the "
                         "ExtractReadout of the reference image (same head)")
    if reference.head_name != readout.head_name:
        raise ValueError(f"reference: it was read with {reference.head_name!r}, readout with {readout.head_name!r}; "
                         "read both with the same head")
    if reference.tensor.shape[-2:] != readout.tensor.shape[-2:]:
        raise ValueError("reference: its readout has another size than readout; read images of the same size")
    return target.scores(readout.tensor, reference.tensor)


def score_readout(readout: Readout, guidance: tuple, reference: Readout | None = None) -> list[Score]:
    """Every score of the targets in `guidance` that read with the readout's head."""
    targets = targets_read_by(readout, guidance)
    if not targets:
        raise ValueError(f"guidance: no target in it uses the head {readout.head_name!r} that made readout; connect "
                         "the readout of a head the guidance uses")
    return [score for target in targets for score in score_target(target, readout, reference)]
