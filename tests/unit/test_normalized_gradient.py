"""The normalized-gradient rule's per-run state: Adam-style normalization, non-finite steps, the correction, the report."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from readout.guidance.run import ADAM_BETA2, GuidanceRun, NormalizedGradient
from readout.targets.base import StepWindow


def test_first_step_is_the_sign_of_the_gradient():
    grad = torch.tensor([2.0, -0.001, 0.0, 5e-4])
    n = NormalizedGradient()(grad, torch.tensor(True))
    assert torch.allclose(n[[0, 1, 3]], torch.tensor([1.0, -1.0, 1.0]), atol=1e-3)
    assert n[2] == 0


def test_later_steps_divide_by_the_bias_corrected_second_moment():
    norm = NormalizedGradient()
    first, second = torch.tensor([1.0, 4.0]), torch.tensor([3.0, 4.0])
    norm(first, torch.tensor(True))
    n = norm(second, torch.tensor(True))
    v = ADAM_BETA2 * (1 - ADAM_BETA2) * first**2 + (1 - ADAM_BETA2) * second**2
    v_hat = v / (1 - ADAM_BETA2**2)
    assert torch.allclose(n, second / (v_hat.sqrt() + norm.eps))
    assert n[1] > 0.99 and n[0] > 1.0, "a gradient larger than before normalizes above 1"


def test_a_non_finite_gradient_gives_zero_and_keeps_the_second_moment():
    norm = NormalizedGradient()
    norm(torch.tensor([1.0, 2.0]), torch.tensor(True))
    before = norm.second_moment.clone()
    n = norm(torch.tensor([float("nan"), 1.0]), torch.tensor(False))
    assert n.tolist() == [0.0, 0.0]
    assert torch.equal(norm.second_moment, before)


def test_a_new_shape_restarts_the_normalization():
    norm = NormalizedGradient()
    norm(torch.ones(2), torch.tensor(True))
    n = norm(torch.full((3,), -7.0), torch.tensor(True))
    assert norm.steps == 1 and torch.allclose(n, -torch.ones(3), atol=1e-6)


def test_the_correction_sums_weighted_directions_in_denoised_units_and_is_taken_once():
    run = GuidanceRun.fresh([(0.0, 1.0)] * 2)
    run.add_direction(0, 0.5, torch.ones(1, 2, 2))
    run.add_direction(1, 2.0, -torch.ones(1, 2, 2))
    like = torch.zeros(1, 2, 2, dtype=torch.float64)
    correction = run.take_correction(torch.tensor([3.0]), like)
    assert correction.dtype == torch.float64
    assert torch.allclose(correction, torch.full((1, 2, 2), -3.0 * (0.5 - 2.0), dtype=torch.float64), atol=1e-5)
    assert run.take_correction(torch.tensor([3.0]), like) is None
    run.add_direction(0, 1.0, torch.ones(1, 2, 2))
    assert run.take_correction(torch.tensor([1.0]), torch.zeros(2, 2, 2)) is None, "a batch of another shape"


@dataclass(frozen=True)
class _Target:
    label: str
    weight: float = 1.0
    active: bool = True
    window: StepWindow = StepWindow(0.0, 0.5)


def test_report_names_skipped_steps_a_missing_branch_and_an_empty_window(caplog):
    run = GuidanceRun.fresh([(0.0, 1.0)] * 4)
    for index in (0, 1):
        run.record_loss(index, 1.0, torch.tensor([0.5]))
        run.add_direction(index, 1.0, torch.ones(2))
    run.record_loss(0, 0.5, torch.tensor([0.25]))
    run.add_direction(0, 1.0, torch.tensor([float("inf"), 0.0]))
    run.targets[1].missed = 2
    targets = (_Target("depth"), _Target("pose"), _Target("edge"), _Target("off", weight=0.0))
    with caplog.at_level(logging.WARNING):
        lines, warnings = run.report(targets, "uncond")
    assert lines == ["depth: guided 1 model evaluation(s)", "pose: guided 1 model evaluation(s)",
                     "edge: guided 0 model evaluation(s)", "off: off (weight 0 or nothing to do)"]
    assert len(warnings) == 3
    assert warnings[0].startswith("depth: the gradient was NaN or infinite at guided evaluation(s) [1]")
    assert "ran no uncond CFG half" in warnings[1] and "set loss_branch to cond" in warnings[1]
    assert "edge: no model evaluation fell in its window (start_percent 0.0 to end_percent 0.5)" in warnings[2]
    assert all(w in caplog.text for w in warnings)
    assert run.loss_history()[0] == [(1.0, 0.5), (0.5, 0.25)]
