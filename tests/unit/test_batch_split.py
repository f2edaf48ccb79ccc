"""Splitting one model call by CFG chunk: rows, nested inputs, per-chunk options, merging, chunk slices."""
from __future__ import annotations

import torch

from readout.guidance.batch_split import BatchSplit
from readout.guidance.patch import chunks_of


def test_chunk_rows_follow_the_chunk_order():
    split = BatchSplit(batch=6, num_chunks=3, grad_chunks=(1,))
    assert split.chunk_size == 2
    assert split.rest_chunks == (0, 2)
    assert split.rows((2, 0)).tolist() == [4, 5, 0, 1]


def test_take_cuts_batch_first_tensors_in_nested_containers_and_leaves_the_rest():
    split = BatchSplit(batch=4, num_chunks=2, grad_chunks=(0,))
    x = torch.arange(4.0)[:, None]
    scalar, other = torch.tensor(3.0), torch.zeros(3, 2)
    value = {"c": [x, (x, other)], "t": scalar, "n": "name"}
    taken = split.take(value, (1,))
    assert taken["c"][0].flatten().tolist() == [2.0, 3.0]
    assert isinstance(taken["c"][1], tuple) and taken["c"][1][0].flatten().tolist() == [2.0, 3.0]
    assert taken["c"][1][1] is other and taken["t"] is scalar and taken["n"] == "name"
    assert taken["c"] is not value["c"], "each call gets its own lists (the UNet pops ControlNet's)"
    assert split.take(value, (0, 1)) is value


def test_take_options_cuts_roles_and_sigmas_to_the_chunks():
    split = BatchSplit(batch=4, num_chunks=2, grad_chunks=(0,))
    options = {"cond_or_uncond": [0, 1], "uuids": ["a", "b"], "sigmas": torch.tensor([1.0, 1.0, 2.0, 2.0]),
               "other": [5, 6]}
    cut = split.take_options(options, (1,))
    assert cut["cond_or_uncond"] == [1] and cut["uuids"] == ["b"] and cut["other"] == [5, 6]
    assert cut["sigmas"].tolist() == [2.0, 2.0]
    assert options["cond_or_uncond"] == [0, 1], "the caller's options are not changed"


def test_merge_puts_each_part_back_in_its_rows_in_the_output_dtype():
    split = BatchSplit(batch=6, num_chunks=3, grad_chunks=(1,))
    grad_part = torch.full((2, 3), 1.0, dtype=torch.float64)
    rest_part = torch.tensor([[0.0] * 3, [0.5] * 3, [2.0] * 3, [2.5] * 3])
    merged = split.merge({(1,): grad_part.float(), (0, 2): rest_part})
    assert merged[:, 0].tolist() == [0.0, 0.5, 1.0, 1.0, 2.0, 2.5]
    assert split.merge({(0, 2): rest_part, (1,): grad_part}).dtype == torch.float32


def test_chunks_of_slices_the_batch_by_cond_or_uncond():
    assert chunks_of(6, {"cond_or_uncond": [1, 0]}) == [slice(0, 3), slice(3, 6)]
    assert chunks_of(4, {}) == [slice(0, 4)]
