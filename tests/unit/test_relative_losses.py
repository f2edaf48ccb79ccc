"""Losses on feature maps: the drag correspondence loss, the training losses, and Self-Guidance's attention
properties, on maps built in the test."""
from __future__ import annotations

import pytest
import torch

from readout.targets.points import DragPair
from readout.targets.relative import cell_points, correspondence_loss, sample_points, similarity
from readout.targets.self_guidance import centroid, shape, size
from readout.train.losses import appearance_distance, correspondence_loss as training_correspondence_loss
from readout.train.losses import point_cells, triplet_loss


def one_hot_features(height: int = 8, width: int = 8) -> torch.Tensor:
    """(1, h*w, h, w): every cell has its own orthogonal feature vector."""
    return torch.eye(height * width).reshape(height * width, height, width)[None]


def test_points_read_the_features_of_their_cell_centre_and_floor():
    features = one_hot_features()
    points = torch.tensor([[12.0, 4.0], [63.0, 63.0]])
    bilinear = sample_points(features, points, (64, 64))
    floored = cell_points(features, points, (64, 64))
    assert bilinear[0, :, 0].argmax() == 0 * 8 + 1 and floored[0, :, 0].argmax() == 0 * 8 + 1
    assert floored[0, :, 1].argmax() == 63
    assert similarity(features[:, :, :1, :1], features[:, :, :1, :1]).item() == pytest.approx(1.0)
    assert similarity(features[:, :, :1, :1], -features[:, :, :1, :1]).item() == pytest.approx(0.0)


def test_the_drag_loss_is_lowest_when_the_content_moved_to_the_targets():
    reference = one_hot_features()
    moved = torch.roll(reference, shifts=2, dims=-1)
    pairs = [DragPair((12.0, 20.0), (28.0, 20.0))]
    kept = correspondence_loss(reference, reference, pairs, (64, 64)).item()
    dragged = correspondence_loss(reference, moved, pairs, (64, 64)).item()
    assert dragged == pytest.approx(-0.5 * 1.0 + 0.5 * 0.5, abs=1e-5), "pulled fully, nothing left behind"
    assert kept == pytest.approx(-0.5 * 0.5 + 0.5 * 1.0, abs=1e-5), "nothing pulled, a full ghost left behind"


def test_training_correspondence_loss_prefers_the_matching_cells():
    features = one_hot_features()[0]
    points = [torch.tensor([[4.0, 4.0], [36.0, 52.0]])]
    matched = training_correspondence_loss([features], [features], points, points, (64, 64)).item()
    swapped = training_correspondence_loss([features], [features], points, [points[0].flip(0)], (64, 64)).item()
    assert matched < swapped
    assert point_cells(points[0], (64, 64), (8, 8)).tolist() == [0, 6 * 8 + 4]


def test_triplet_loss_is_a_hinge_on_cosine_distances():
    anchor = torch.ones(2, 3, 2, 2)
    assert appearance_distance(anchor, -anchor).tolist() == pytest.approx([2.0, 2.0])
    assert triplet_loss(anchor, anchor, -anchor).item() == 0.0
    assert triplet_loss(anchor, -anchor, anchor).item() == pytest.approx(2 * (2.0 + 0.5))


def test_attention_centroid_size_and_shape_follow_the_map():
    maps = torch.zeros(1, 1, 4, 8)
    maps[..., 1, 6] = 3.0
    assert centroid(maps)[0].tolist() == pytest.approx([6.5 / 8, 1.5 / 4])
    assert size(maps).item() == pytest.approx(3.0 / 32)
    soft = shape(maps)
    assert soft[..., 1, 6].item() > 0.99 and soft[..., 0, 0].item() < 0.01



def test_attention_tokens_counted_from_the_end_read_their_columns():
    """Self-Guidance's word maps for tokens counted from the conditioning's end (Qwen-Image, Flux.2, Krea 2) are those
    of the same tokens counted from its start: each image position's softmax over all text keys, the tokens' columns,
    the mean over heads; a token outside the conditioning is refused by name."""
    from readout.backbones.cross_attention import AttentionStore

    gen = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(1, 2, 16, 8, generator=gen), torch.randn(1, 2, 6, 8, generator=gen)
    from_end, from_start = AttentionStore([-4, -3]), AttentionStore([2, 3])
    from_end.add(queries, keys)
    from_start.add(queries, keys)
    expected = (queries @ keys.transpose(-1, -2) / 8 ** 0.5).softmax(-1)[..., [2, 3]].mean(1)
    assert torch.allclose(from_end.maps[0], expected) and torch.allclose(from_start.maps[0], expected)
    assert torch.equal(from_end.word_maps((-3,), 4, 4), from_start.word_maps((3,), 4, 4))
    with pytest.raises(ValueError, match="token -7 is outside the 6 tokens of the conditioning"):
        AttentionStore([-7]).add(queries, keys)
