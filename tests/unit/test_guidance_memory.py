"""What the guided pass declares to ComfyUI's memory estimate, and the out-of-memory message."""
from __future__ import annotations

import pytest
import torch

from readout.guidance.memory import (GuidanceOutOfMemory, extra_memory_declared, guided_pass_bytes, head_pass_bytes,
                                     out_of_memory_explained, weight_copy_bytes)
from readout.guidance.patch import GuidanceOptions
from readout.heads.architecture import HeadConfig

SD15_DIMS = (1280,) * 6 + (640,) * 3 + (320,) * 3


class Base:
    """A stand-in for ComfyUI's BaseModel: an estimate proportional to the batch and the latent's area."""

    def memory_required(self, input_shape, cond_shapes={}):
        return 1000 * input_shape[0] * input_shape[2] * input_shape[3]


class Head:
    config = HeadConfig(kind="depth", family="sd15", dims=SD15_DIMS, use_output_head=True)


def test_head_bytes_grow_with_batch_and_area():
    config = Head.config
    one = head_pass_bytes(config, 1, 64, 64)
    assert head_pass_bytes(config, 2, 64, 64) == 2 * one
    assert head_pass_bytes(config, 1, 128, 128) == 4 * one
    assert 100 * 2 ** 20 < one < 150 * 2 ** 20, "SD1.5 at 512 px, layers checkpointed: 124 MiB (129 measured)"


def test_both_branches_and_no_checkpointing_declare_more():
    shape = (1, 4, 64, 64)
    blocks = [torch.nn.Linear(100, 100), torch.nn.Linear(10, 10)]
    cond = guided_pass_bytes(Base(), [Head()], shape, 1, True, blocks)
    largest = 4 * (100 * 100 + 100)
    assert guided_pass_bytes(Base(), [Head()], shape, 1, True, []) == cond - largest
    assert guided_pass_bytes(Base(), [Head()], shape, 2, True, blocks) == 2 * cond - largest
    assert guided_pass_bytes(Base(), [Head()], shape, 1, False, blocks) > cond
    assert weight_copy_bytes(blocks, False) == largest + 4 * (10 * 10 + 10)
    assert guided_pass_bytes(Base(), [Head(), Head()], shape, 1, True, blocks) > cond


def test_the_estimate_is_raised_inside_and_restored_after():
    base = Base()
    plain = base.memory_required([2, 4, 8, 8])
    with extra_memory_declared(base, 123):
        assert base.memory_required([2, 4, 8, 8], cond_shapes={}) == plain + 123
    assert base.memory_required([2, 4, 8, 8]) == plain and "memory_required" not in base.__dict__
    with pytest.raises(KeyError), extra_memory_declared(base, 5):
        raise KeyError("an error inside")
    assert "memory_required" not in base.__dict__


@pytest.mark.parametrize("branch, checkpointing, fixes, not_said", [
    ("both", True, ["set loss_branch to cond", "lower the resolution"], "turn gradient_checkpointing on"),
    ("cond", False, ["turn gradient_checkpointing on", "--reserve-vram"], "loss_branch to cond"),
])
def test_out_of_memory_names_what_to_lower(branch, checkpointing, fixes, not_said):
    x = torch.zeros(2, 4, 128, 96)
    options = GuidanceOptions(loss_branch=branch, gradient_checkpointing=checkpointing)
    with pytest.raises(GuidanceOutOfMemory) as error, out_of_memory_explained(x, options):
        raise torch.OutOfMemoryError("CUDA out of memory")
    message = str(error.value)
    assert "latent 128x96, batch 2" in message and all(fix in message for fix in fixes)
    assert not_said not in message
    assert isinstance(error.value, torch.OutOfMemoryError)


def test_other_errors_pass_through_unchanged():
    with pytest.raises(ValueError, match="not memory"), out_of_memory_explained(torch.zeros(1, 4, 8, 8),
                                                                                 GuidanceOptions()):
        raise ValueError("not memory")
