"""Nodes that show what guidance did: a readout scored against its targets, drag points drawn, a word's attention."""
from __future__ import annotations

import torch

from ..readout.backbones.base import LATENT_SCALE
from ..readout.report.drawing import draw_pairs, heat, mark
from ..readout.report.scores import score_readout
from ..readout.report.word_attention import check_edit, word_maps
from .common import CATEGORY, ReadoutType, ReadoutGuidanceType, io, seed_input

GUIDANCE_INPUT_TIP = "The guidance the image was sampled with (the same output that feeds the sampler)."


class ReadoutScore(io.ComfyNode):
    """How close a readout is to the targets that guided it: their own losses, or similarity at drag targets."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReadoutScore", display_name="Readout Score", category=CATEGORY, is_output_node=True,
            description=("Scores a readout against the targets that guided it: compare an unguided and a guided "
                         "image from the same seed to see what guidance did."),
            inputs=[
                ReadoutType.Input("readout", tooltip="From ExtractReadout on the image to score, with the head the "
                                                 "guidance uses."),
                ReadoutGuidanceType.Input("guidance", tooltip=GUIDANCE_INPUT_TIP + " Targets of other heads are "
                                                          "ignored."),
                ReadoutType.Input("reference", optional=True, tooltip=(
                    "Drag, appearance, identity: ExtractReadout of the reference image with the same "
                    "head (the targets compare with it).")),
            ],
            outputs=[
                io.Float.Output(display_name="score", tooltip=(
                    "The first score: spatial loss, appearance distance, or drag similarity at the first target.")),
                io.String.Output(display_name="report", tooltip="Every score, one per line, with which way is better."),
            ],
        )

    @classmethod
    def execute(cls, readout, guidance, reference=None) -> io.NodeOutput:
        scores = score_readout(readout, tuple(guidance or ()), reference)
        report = "\n".join(score.text for score in scores)
        ui = {"text": [report], "scores": [{"label": s.label, "value": s.value, "higher_is_better": s.higher_is_better}
                                           for s in scores]}
        return io.NodeOutput(scores[0].value, report, ui=ui)


class DrawDragPoints(io.ComfyNode):
    """Draw a drag target's point pairs on an image: source dot, arrow, target ring."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DrawDragPoints", display_name="Draw Drag Points", category=CATEGORY,
            description="Shows where a drag moves content from (red) and to (green).",
            inputs=[
                io.Image.Input("image", tooltip="The image to draw on, e.g. the reference or its readout; points "
                                                "are scaled from the reference image's size to this one."),
                ReadoutGuidanceType.Input("guidance", tooltip="Guidance with a Readout Drag Target: its points are "
                                                          "drawn."),
            ],
            outputs=[io.Image.Output(tooltip="The image with sources (red dots), arrows and targets (green rings).")],
        )

    @classmethod
    def execute(cls, image, guidance) -> io.NodeOutput:
        drags = [points for points in (t.drag_points() for t in guidance or ()) if points is not None]
        if not drags:
            raise ValueError("guidance: it has no Readout Drag Target; connect the drag node's guidance output")
        return io.NodeOutput(draw_pairs(image, [pair for pairs, _ in drags for pair in pairs], drags[0][1]))


class WordAttentionMap(io.ComfyNode):
    """Where a Self-Guidance Target's words attend in a sampled latent, with the centroid, the edit's goal and loss."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WordAttentionMap", display_name="Word Attention Map", category=CATEGORY, is_output_node=True,
            description="Shows a prompt word's cross-attention map in a latent and how far it is from the edit's goal.",
            inputs=[
                io.Model.Input("model", tooltip="The model that sampled the latent."),
                io.Conditioning.Input("positive", tooltip="The positive prompt the Self-Guidance Target's words "
                                                          "come from."),
                io.Latent.Input("samples", tooltip="The latent to read (e.g. the guided sampler's output); for an "
                                                   "image, VAEEncode it first."),
                ReadoutGuidanceType.Input("guidance", tooltip=GUIDANCE_INPUT_TIP + " Its Self-Guidance Target gives "
                                                          "the words and the goal."),
                io.Int.Input("timestep", default=500, min=0, max=999, tooltip=(
                    "Noise level the latent is read at (0 = clean, 999 = pure noise); "
                    "Self-Guidance acts early in sampling, at high noise.")),
                seed_input(),
                io.Latent.Input("unguided_samples", optional=True, tooltip=(
                    "The latent from the same seed without guidance (the guided sampler's reference "
                    "output): move_by, scale_size and keep_shape are measured from it.")),
            ],
            outputs=[
                io.Image.Output(display_name="attention_map", tooltip=(
                    "The words' attention (yellow = most, blue = least), centroid (white cross), goal (green ring).")),
                io.Float.Output(display_name="loss", tooltip="The Self-Guidance loss of the latent (lower is better)."),
                io.String.Output(display_name="report", tooltip="Centroid, goal and loss as text."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, samples, guidance, timestep: int, seed: int,
                unguided_samples=None) -> io.NodeOutput:
        edits = [t for t in guidance or () if t.attention_tokens()]
        if not edits:
            raise ValueError("guidance: it has no Self-Guidance Target; connect that node's guidance output")
        target = edits[0]
        latent = samples["samples"]
        maps = word_maps(model, latent, positive, target.attention_tokens(), timestep, seed)
        unguided = None if unguided_samples is None else word_maps(model, unguided_samples["samples"], positive,
                                                                   target.attention_tokens(), timestep, seed)
        check = check_edit(target, maps, unguided)
        size = (latent.shape[-2] * LATENT_SCALE, latent.shape[-1] * LATENT_SCALE)
        picture = mark(heat(check.maps, size), check.centroids, check.goals)
        loss = float(check.losses.mean())
        report = f"{target.label}: centroid {_xy(check.centroids[0])}"
        report += "" if check.goals is None else f", goal {_xy(check.goals[0])}"
        report += f", loss {loss:.4f} (lower is better)"
        ui = {"text": [report], "scores": [{"label": f"{target.label} loss", "value": loss, "higher_is_better": False}]}
        return io.NodeOutput(picture, loss, report, ui=ui)


def _xy(point: torch.Tensor) -> str:
    return f"({float(point[0]):.3f}, {float(point[1]):.3f})"


NODES = [ReadoutScore, DrawDragPoints, WordAttentionMap]
