"""Drag point pairs from the points editor's JSON: both item forms, and errors that name the input and the pair."""
from __future__ import annotations

import pytest

from readout.targets.points import DragPair, check_inside, parse_drag_pairs


def test_both_item_forms_parse_to_pixel_pairs():
    text = '[{"source": [1, 2], "target": [3.5, 4]}, [[5, 6], [7, 8]]]'
    assert parse_drag_pairs(text) == [DragPair((1.0, 2.0), (3.5, 4.0)), DragPair((5.0, 6.0), (7.0, 8.0))]
    assert parse_drag_pairs("  ") == [] and parse_drag_pairs("[]") == []


@pytest.mark.parametrize("text, message", [
    ("[{", "drags: not valid JSON"),
    ('{"source": [1, 2]}', "drags: expected a list of point pairs, got dict"),
    ('[{"source": [1, 2]}]', "drags: pair 1 has no target"),
    ('[{"source": [1, 2], "target": [3, 4]}, {"target": [1, 1]}]', "drags: pair 2 has no source"),
    ('[{"source": [1, "a"], "target": [3, 4]}]', "drags: pair 1 source must be [x, y] in pixels"),
    ("[[1, 2]]", "drags: pair 1 source must be [x, y]"),
    ("[7]", "drags: pair 1: expected"),
    ("[" * 100000, "drags:"),
])
def test_bad_points_name_the_input_and_the_pair(text, message):
    with pytest.raises(ValueError) as error:
        parse_drag_pairs(text, "drags")
    assert str(error.value).startswith(message)


def test_points_outside_the_image_are_refused_with_the_image_size():
    pairs = [DragPair((0.0, 0.0), (63.0, 63.0)), DragPair((10.0, 10.0), (64.0, 5.0))]
    check_inside(pairs[:1], 64, 64)
    with pytest.raises(ValueError, match=r"points: pair 2 target \(64, 5\) is outside the 64x64 reference image"):
        check_inside(pairs, 64, 64)
