"""The spatial map loss the sampler and the trainer share: control range, sparse maps, masks, resizing."""
from __future__ import annotations

import pytest
import torch

from readout.targets.spatial import masked_mean, resize_map, spatial_map_loss


def test_masked_mean_is_per_sample_and_zero_for_an_empty_mask():
    values = torch.arange(8.0).reshape(2, 1, 2, 2)
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    assert masked_mean(values, weights).tolist() == [1.5, 5.5]
    assert masked_mean(values, torch.zeros(1, 1, 2, 2)).tolist() == [0.0, 0.0]


def test_a_unit_map_is_compared_in_the_heads_control_range():
    target = torch.full((1, 3, 4, 4), 0.75)
    exact = torch.full((1, 3, 4, 4), 0.25)
    assert spatial_map_loss(exact, target, (-0.5, 0.5), sparse=False).item() == 0.0
    assert spatial_map_loss(exact, target, (-1.0, 1.0), sparse=False).item() == pytest.approx(0.25**2)


def test_sparse_maps_weigh_drawn_and_empty_pixels_equally():
    target = torch.zeros(1, 3, 4, 4)
    target[..., 0, 0] = 1.0
    readout = torch.full((1, 3, 4, 4), -0.5)
    readout[..., 0, 0] = -0.5
    dense = spatial_map_loss(readout, target, (-0.5, 0.5), sparse=False).item()
    sparse = spatial_map_loss(readout, target, (-0.5, 0.5), sparse=True).item()
    assert dense == pytest.approx(1.0 / 16)
    assert sparse == pytest.approx(0.5), "the one drawn pixel counts for half of the loss"


def test_a_mask_limits_the_loss_to_its_pixels():
    target = torch.zeros(2, 3, 4, 4)
    readout = torch.zeros(2, 3, 4, 4)
    readout[:, :, :2] = 1.0
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:, :] = 1.0
    assert spatial_map_loss(readout, target, (0.0, 1.0), sparse=False, mask=mask).tolist() == [0.0, 0.0]


def test_larger_targets_are_area_averaged_to_the_readout_size():
    target = torch.zeros(1, 1, 4, 4)
    target[..., ::2, ::2] = 1.0
    assert torch.allclose(resize_map(target, (2, 2)), torch.full((1, 1, 2, 2), 0.25))
    assert resize_map(target, torch.Size([4, 4])) is target
    assert resize_map(target, (8, 8)).shape == (1, 1, 8, 8)
