"""Drag, appearance and identity guidance with generated and real (inverted) references, on the tiny model."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import TinyBed, assert_plot_shows_losses, call_node, every_family, node_output

STEPS = 10
DRAG_LOSS_DROP = {"sd15": 0.01, "sdxl": 0.004}
"""How far a drag must lower its loss below the same drag at weight 0 (the tiny SDXL-family model's drag loss is
smaller: measured 0.0180 -> 0.0117)."""
POINTS = json.dumps([{"source": [16, 16], "target": [40, 40]}, {"source": [48, 20], "target": [30, 20]}])


class Bed(TinyBed):
    def __init__(self, family: str = "sd15") -> None:
        super().__init__("a cat on a sofa", family)
        self.corr = self.load_head("correspondence")
        self.app = self.load_head("appearance")
        y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
        self.image = torch.stack([x, y, 1 - x * y], dim=-1)[None]

    def sample(self, guidance, steps: int = STEPS, sampler: str = "euler", scheduler: str = "normal", cfg: float = 5.0):
        edited, plot, reference = call_node(
            "ReadoutGuidedKSampler", model=self.model, seed=3, steps=steps, cfg=cfg, sampler_name=sampler,
            scheduler=scheduler, positive=self.pos, negative=self.neg, latent_image=self.latent, denoise=1.0,
            guidance=guidance)
        return edited["samples"], reference["samples"], plot

    def drag(self, points: str = POINTS, weight: float = 1.0, **extra):
        return call_node("ReadoutDragTarget", correspondence_head=self.corr, points=points, drag_weight=weight,
                         start_percent=0.0, end_percent=1.0, **{"reference_image": self.image, **extra})[0]

    def relative_loss(self, target, edited: torch.Tensor, reference: torch.Tensor) -> float:
        return float(target.loss(self.readout(edited, target.head), self.readout(reference, target.head)).sum())


@pytest.fixture(scope="module")
def bed(family) -> Bed:
    return Bed(family)


def test_empty_point_list_leaves_the_edit_equal_to_the_reference(bed):
    edited, reference, _ = bed.sample(bed.drag(points="[]"))
    assert torch.equal(edited, reference)


@pytest.mark.every_comfyui
@every_family
def test_drag_loss_falls_with_a_generated_reference(bed):
    guidance = bed.drag()
    edited, reference, plot = bed.sample(guidance)
    unguided, same_reference, _ = bed.sample(bed.drag(weight=0.0))
    # the guided run splits the CFG halves into two UNet calls: equal up to batch-size rounding, not bit for bit
    torch.testing.assert_close(reference, same_reference, rtol=1e-4, atol=1e-3,
                               msg="the reference branch must stay unguided")
    guided_loss, unguided_loss = (bed.relative_loss(guidance[0], s, reference) for s in (edited, unguided))
    assert guided_loss < unguided_loss - DRAG_LOSS_DROP[bed.family], (guided_loss, unguided_loss)
    assert_plot_shows_losses(plot, [t.label for t in guidance])


def test_drag_with_appearance_keeps_the_rest_closer(bed):
    drag_only = bed.drag()
    with_appearance = bed.drag(appearance_head=bed.app, appearance_weight=2.0)
    assert [t.label.split()[0] for t in with_appearance] == ["drag", "appearance"]
    kept = with_appearance[1]
    free, ref_a, _ = bed.sample(drag_only)
    held, ref_b, _ = bed.sample(with_appearance)
    assert torch.equal(ref_a, ref_b)
    assert bed.relative_loss(kept, held, ref_b) < bed.relative_loss(kept, free, ref_a)


def appearance_losses(bed, make_target, weights) -> list[float]:
    losses = []
    for weight in weights:
        guidance = make_target(weight)
        edited, reference, _ = bed.sample(guidance)
        losses.append(bed.relative_loss(guidance[0], edited, reference))
    return losses


@pytest.mark.every_comfyui
def test_appearance_loss_falls_as_its_weight_rises(bed):
    """On SD1.5: the appearance target reads the same backbone features as drag, whose SDXL-family run is above."""
    def target(weight):
        return call_node("ReadoutAppearanceTarget", appearance_head=bed.app, weight=weight, start_percent=0.0,
                         end_percent=1.0)[0]

    losses = appearance_losses(bed, target, [0.0, 0.5, 2.0])
    assert losses[0] > losses[1] > losses[2], losses


@pytest.mark.every_comfyui
def test_identity_loss_falls_as_its_weight_rises(bed):
    face = torch.zeros(1, 64, 64)
    face[:, 12:40, 20:44] = 1.0

    def target(weight):
        return call_node("ReadoutIdentityTarget", identity_head=bed.app, face_mask=face, weight=weight,
                         start_percent=0.0, end_percent=1.0, appearance_head=bed.app, appearance_weight=0.2)[0]

    assert [t.label.split()[0] for t in target(1.0)] == ["identity", "appearance"]
    losses = appearance_losses(bed, target, [0.0, 0.5, 2.0])
    assert losses[0] > losses[1] > losses[2], losses


def invert(bed, steps: int, refinements: int = 5):
    return call_node("ReadoutInvertImage", model=bed.model, vae=bed.vae, image=bed.image, positive=bed.pos,
                     steps=steps, scheduler="ddim_uniform", refinements=refinements)[0]


RECONSTRUCTION_TOLERANCE = 0.05
"""Relative L2 error of the reconstructed latent (measured 0.027 at 30 ddim steps, 5 refinements, CFG 1)."""


def test_inversion_then_unguided_sampling_reconstructs_the_image(bed):
    reference = invert(bed, steps=30)
    edited, source, _ = bed.sample(bed.drag(points="[]", reference=reference), steps=30, sampler="ddim",
                                   scheduler="ddim_uniform", cfg=1.0)
    error = float((edited - reference.source_latent).norm() / reference.source_latent.norm())
    assert error < RECONSTRUCTION_TOLERANCE, error
    assert torch.equal(source, reference.source_latent.to(source))
    plain = invert(bed, steps=30, refinements=0)
    plain_edit = bed.sample(bed.drag(points="[]", reference=plain), steps=30, sampler="ddim",
                            scheduler="ddim_uniform", cfg=1.0)[0]
    assert float((plain_edit - plain.source_latent).norm() / plain.source_latent.norm()) > error


@pytest.mark.every_comfyui
def test_drag_on_a_real_image_lowers_the_drag_loss(bed):
    reference = invert(bed, steps=STEPS, refinements=2)
    guidance = bed.drag(reference=reference)
    edited, source, _ = bed.sample(guidance, sampler="ddim", scheduler="ddim_uniform")
    unguided = bed.sample(bed.drag(reference=reference, weight=0.0), sampler="ddim", scheduler="ddim_uniform")[0]
    assert bed.relative_loss(guidance[0], edited, source) < bed.relative_loss(guidance[0], unguided, source)


def test_reference_inverted_with_another_schedule_is_refused(bed):
    reference = invert(bed, steps=4, refinements=0)
    with pytest.raises(ValueError, match="inverted with 4 steps of the 'ddim_uniform' scheduler"):
        bed.sample(bed.drag(reference=reference), steps=6)


@pytest.mark.parametrize("points, message", [
    ('[{"source": [70, 10], "target": [5, 5]}]', r"points: pair 1 source \(70, 10\) is outside the 64x64 reference image"),
    ('[{"source": [10, 10], "target": [5, 5]', "points: not valid JSON"),
    ('[{"source": [10, 10]}]', "points: pair 1 has no target: every source needs a target"),
    ('[[10, 10]]', r"points: pair 1 source must be \[x, y\] in pixels, got 10"),
])
def test_bad_points_name_the_problem(bed, points, message):
    with pytest.raises(ValueError, match=message):
        bed.drag(points=points)


def test_points_json_input_overrides_the_widget(bed):
    override = json.dumps([[[1, 2], [3, 4]]])
    guidance = bed.drag(points="[]", points_json=override)
    assert [(p.source, p.target) for p in guidance[0].pairs] == [((1.0, 2.0), (3.0, 4.0))]
    with pytest.raises(ValueError, match="points_json: not valid JSON"):
        bed.drag(points_json="{")


def test_wrong_head_kinds_are_refused_naming_the_input(bed):
    with pytest.raises(ValueError, match="appearance_head: appearance guidance needs a appearance or identity head"):
        call_node("ReadoutAppearanceTarget", appearance_head=bed.corr, weight=1.0, start_percent=0.0, end_percent=1.0)
    with pytest.raises(ValueError, match="correspondence_head: dragging needs a correspondence head"):
        call_node("ReadoutDragTarget", correspondence_head=bed.app, points="[]", drag_weight=1.0, start_percent=0.0,
                  end_percent=1.0, reference_image=bed.image)
    with pytest.raises(ValueError, match="appearance_head: keeping appearance needs"):
        bed.drag(appearance_head=bed.corr)


def test_relative_targets_need_the_guided_sampler(bed):
    with pytest.raises(ValueError, match="relative targets .* need KSampler \\(Readout Guidance\\)"):
        call_node("ApplyReadoutGuidance", model=bed.model, guidance=bed.drag())


def test_drag_node_shows_the_reference_in_the_editor(bed):
    out = node_output("ReadoutDragTarget", correspondence_head=bed.corr, points="[]", drag_weight=1.0,
                    start_percent=0.0, end_percent=1.0, reference_image=bed.image)
    preview = out["ui"]["reference_preview"][0]
    assert preview["type"] == "temp" and preview["filename"].endswith(".png")


def test_inpainting_latent_is_refused_for_relative_guidance(bed):
    masked = {**bed.latent, "noise_mask": torch.ones(1, 1, 8, 8)}
    with pytest.raises(ValueError, match="latent_image: relative guidance .* does not take a noise mask"):
        call_node("ReadoutGuidedKSampler", model=bed.model, seed=3, steps=2, cfg=5.0, sampler_name="euler",
                  scheduler="normal", positive=bed.pos, negative=bed.neg, latent_image=masked, denoise=1.0,
                  guidance=bed.drag())
