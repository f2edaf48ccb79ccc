"""Recurrence (several guided passes per step, for few-step models) through the real nodes on the tiny SD1.5, and its
re-noising against ComfyUI's own model samplings."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import SpatialBed, TinyBed, call_node, node_output, pack_module, schema_inputs

recurrence = pack_module("readout.guidance.recurrence")
FEW_STEPS = 4


def model_sampling(kind: str):
    """ComfyUI's model sampling of an SD1.5-style (EPS, discrete) or a flow (CONST, shifted) model."""
    import comfy.model_sampling as ms

    if kind == "eps":
        class Sampling(ms.ModelSamplingDiscrete, ms.EPS):
            pass
        return Sampling(None)

    class FlowSampling(ms.ModelSamplingDiscreteFlow, ms.CONST):
        pass
    return FlowSampling(None)


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_renoising_keeps_the_noise_the_forward_process_keeps(kind):
    """From x = a d + b e at sigma, the step to sigma' and back keeps r e with fresh noise for the rest, r the share
    the forward process from sigma' to sigma keeps (EPS: sigma'/sigma; flow: sigma'(1-sigma)/((1-sigma')sigma))."""
    sampling = model_sampling(kind)
    generator = torch.Generator().manual_seed(0)
    denoised, noise, fresh = (torch.randn(1, 4, 8, 8, generator=generator) for _ in range(3))
    sigma, sigma_next = (3.0, 1.5) if kind == "eps" else (0.8, 0.5)
    a, b = (1.0, sigma) if kind == "eps" else (1 - sigma, sigma)
    keep = sigma_next / sigma if kind == "eps" else sigma_next * (1 - sigma) / ((1 - sigma_next) * sigma)
    x = a * denoised + b * noise
    moved = recurrence.renoised(sampling, x, denoised, sigma, sigma_next, fresh)
    torch.testing.assert_close(moved, a * denoised + b * (keep * noise + (1 - keep ** 2) ** 0.5 * fresh))


def test_no_pass_where_a_flow_latent_holds_no_signal():
    """At a flow model's sigma 1 the latent is all noise: a re-noised pass would only draw a new seed."""
    x = torch.randn(1, 4, 8, 8)
    assert recurrence.renoised(model_sampling("flow"), x, torch.zeros_like(x), 1.0, 0.7, torch.randn_like(x)) is None


def test_auto_gives_short_runs_the_familys_passes_and_long_runs_one():
    four, twelve = torch.linspace(1.0, 0.0, 5), torch.linspace(1.0, 0.0, 13)
    auto = recurrence.AUTO
    assert [recurrence.passes_per_step(auto, four, False, family) for family in (2, 1)] == [2, 1]
    assert recurrence.passes_per_step(auto, twelve, False, 2) == 1
    assert recurrence.passes_per_step(auto, four, True, 2) == 1
    assert recurrence.passes_per_step(3, twelve, True, 1) == 3


def test_next_sigma_is_the_schedules_next():
    sigmas = torch.tensor([14.6, 6.0, 2.0, 0.5, 0.0])
    assert [recurrence.next_sigma(sigmas, s) for s in (14.6, 2.0, 0.5)] == [pytest.approx(6.0), 0.5, 0.0]


@pytest.fixture(scope="module")
def bed() -> SpatialBed:
    return SpatialBed(steps=FEW_STEPS)


def guided_evaluations(report: dict) -> int:
    """The guided model evaluations the sampler node's report counts."""
    line = next(line for line in report["ui"]["text"][0].splitlines() if "guided" in line)
    return int(line.split("guided ")[1].split()[0])


def test_recurrence_guides_each_step_again_and_lowers_the_loss_further(bed):
    guidance = bed.target(weight=1.0, end=1.0)
    plain = bed.loss(guidance, bed.ksampler(bed.model, cfg=1.0))
    runs = {passes: bed.guided_run(guidance, cfg=1.0, recurrence=passes) for passes in (1, 2)}
    assert [guided_evaluations(runs[p]) for p in (1, 2)] == [FEW_STEPS, 2 * FEW_STEPS]
    losses = {p: bed.loss(guidance, run["result"][0]["samples"]) for p, run in runs.items()}
    assert losses[2] < losses[1] < plain, losses


def test_auto_takes_two_passes_up_to_eight_steps_and_one_beyond(bed):
    """The default (0, auto): the sampler node without the input guides a 4-step run twice a step, a 9-step run once."""
    guidance = bed.target(weight=1.0, end=1.0)
    assert schema_inputs("ReadoutGuidedKSampler")["recurrence"].default == 0
    inputs = dict(model=bed.model, seed=1, cfg=1.0, sampler_name="euler", scheduler="normal", positive=bed.pos,
                  negative=bed.neg, latent_image=bed.latent, denoise=1.0, guidance=guidance)
    counts = [guided_evaluations(node_output("ReadoutGuidedKSampler", steps=steps, **inputs)) for steps in (4, 9)]
    assert counts == [8, 9]


def test_recurrence_outside_the_window_samples_as_ksampler(bed):
    """Only evaluations a target guides run again: at weight 0 the run is KSampler's, bit for bit."""
    plain = bed.ksampler(bed.model)
    assert torch.equal(bed.guided(bed.target(weight=0.0), recurrence=3)[0], plain)


def test_recurrence_keeps_the_reference_branch_of_a_drag_and_auto_drags_in_one_pass():
    """The reference half of a relative target's batch follows its own trajectory: passes re-noise the edit only. Auto
    guides a drag once a step (a second pass did not move the world's drags further)."""
    drag_bed = TinyBed("a cat on a sofa")
    head = drag_bed.load_head("correspondence")
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    points = json.dumps([{"source": [16, 16], "target": [40, 40]}])
    drag = call_node("ReadoutDragTarget", correspondence_head=head, points=points, drag_weight=1.0,
                     start_percent=0.0, end_percent=1.0, reference_image=image)[0]

    def sample(passes: int):
        edited, _, reference = call_node(
            "ReadoutGuidedKSampler", model=drag_bed.model, seed=3, steps=FEW_STEPS, cfg=1.0, sampler_name="euler",
            scheduler="normal", positive=drag_bed.pos, negative=drag_bed.neg, latent_image=drag_bed.latent,
            denoise=1.0, guidance=drag, recurrence=passes)
        return edited["samples"], reference["samples"]

    (edited_1, reference_1), (edited_2, reference_2), (edited_auto, _) = sample(1), sample(2), sample(0)
    torch.testing.assert_close(reference_2, reference_1)
    assert not torch.allclose(edited_2, edited_1)
    assert torch.equal(edited_auto, edited_1)


def test_recurrence_with_rule_official_is_refused_naming_both(bed):
    with pytest.raises(ValueError, match="recurrence: rule official"):
        node_output("ReadoutGuidedKSampler", model=bed.model, seed=1, steps=FEW_STEPS, cfg=5.0, sampler_name="ddim",
                    scheduler="normal", positive=bed.pos, negative=bed.neg, latent_image=bed.latent, denoise=1.0,
                    guidance=bed.target(), rule="official", recurrence=2)
