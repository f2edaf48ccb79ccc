"""Readout head architecture: official sizes, config validation, and a forward usable for guidance."""
from __future__ import annotations

import json

import pytest
import torch

from readout.heads import architecture

HeadConfig, ReadoutHead = architecture.HeadConfig, architecture.ReadoutHead

SD15_DIMS = (1280,) * 6 + (640,) * 3 + (320,) * 3
SDXL_DIMS = (1280,) * 3 + (640,) * 3 + (320,) * 3
SMALL_DIMS = (256, 128, 128)


def small_config(**overrides) -> HeadConfig:
    """A head small enough for many CPU forwards: projection 128 (bottleneck 32 = one GroupNorm group)."""
    values = dict(kind="appearance", family="sd15", dims=SMALL_DIMS, projection_dim=128)
    values.update(overrides)
    return HeadConfig(**values)


def small_features(batch: int = 2, sizes=(8, 16, 16), dims=SMALL_DIMS, **kwargs) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, dim, size, size, generator=gen, **kwargs) for dim, size in zip(dims, sizes)]


def parameter_count(config: HeadConfig) -> int:
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in ReadoutHead(config).parameters())


@pytest.mark.parametrize(
    "family, dims, expected", [("sd15", SD15_DIMS, 8_484_751), ("sdxl", SDXL_DIMS, 5_907_436)]
)
def test_spatial_heads_have_the_official_parameter_counts(family, dims, expected):
    config = HeadConfig(kind="depth", family=family, dims=dims, use_output_head=True)
    assert parameter_count(config) == expected


def test_relative_heads_have_no_output_head():
    config = HeadConfig(kind="correspondence", family="sdxl", dims=SDXL_DIMS, use_emb=False)
    spatial = HeadConfig(kind="pose", family="sdxl", dims=SDXL_DIMS, use_output_head=True)
    assert parameter_count(spatial) - parameter_count(config) == 479_491
    assert not any(name.startswith("output_head") for name in ReadoutHead(small_config()).state_dict())


def test_config_round_trips_through_json():
    config = small_config(kind="edge", use_output_head=True, control_range=(-0.5, 0.5), sparse_loss=True)
    again = HeadConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.dims == SMALL_DIMS and isinstance(again.control_range, tuple)
    assert config.is_spatial and config.num_layers == 3 and config.readout_channels == 3
    assert not small_config().is_spatial and small_config().readout_channels == 128


@pytest.mark.parametrize(
    "change, field",
    [
        ({"kind": "segmentation"}, "kind"),
        ({"family": "sd21"}, "family"),
        ({"dims": [256, "128"]}, "dims"),
        ({"dims": []}, "dims"),
        ({"projection_dim": 384.0}, "projection_dim"),
        ({"use_emb": "yes"}, "use_emb"),
        ({"control_range": [1, -1]}, "control_range"),
        ({"save_timestep": 0}, "save_timestep"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_from_dict_names_the_bad_field(change, field):
    data = small_config().to_dict()
    data.update(change)
    with pytest.raises(ValueError, match=field):
        HeadConfig.from_dict(data)


def test_from_dict_names_missing_fields_and_inconsistent_ones():
    data = small_config().to_dict()
    del data["dims"]
    with pytest.raises(ValueError, match="'dims'"):
        HeadConfig.from_dict(data)
    with pytest.raises(ValueError, match="3-channel output head"):
        small_config(kind="pose")
    with pytest.raises(ValueError, match="use_emb"):
        small_config(bottleneck_sequential=True)


def test_forward_resizes_each_layer_to_the_largest_map():
    head = ReadoutHead(small_config(kind="pose", use_output_head=True)).eval()
    emb = torch.randn(2, 1280)
    features = small_features(sizes=(8, 16, 32))
    out = head(features, emb)
    assert out.shape == (2, 3, 32, 32)
    for index in range(len(features)):
        without = [torch.zeros_like(f) if i == index else f for i, f in enumerate(features)]
        assert not torch.allclose(head(without, emb), out), f"layer {index} does not reach the output"
    assert head(small_features(sizes=(8, 16, 32)), emb, output_size=(24, 20)).shape == (2, 3, 24, 20)


def test_emb_conditions_the_readout_and_is_required():
    head = ReadoutHead(small_config()).eval()
    features = small_features()
    first = head(features, torch.randn(2, 1280))
    assert first.shape == (2, 128, 16, 16)
    assert not torch.allclose(first, head(features, torch.randn(1, 1280)))
    with pytest.raises(ValueError, match="timestep embedding"):
        head(features)


def test_heads_without_emb_ignore_it():
    head = ReadoutHead(small_config(kind="correspondence", use_emb=False)).eval()
    features = small_features()
    assert torch.equal(head(features), head(features, torch.randn(2, 1280)))


def test_sequential_layout_nests_each_block_and_ignores_emb():
    head = ReadoutHead(small_config(bottleneck_sequential=True, use_emb=False)).eval()
    keys = set(head.state_dict())
    assert "bottleneck_layers.0.0.conv1.weight" in keys and "bottleneck_layers.2.0.emb_layers.bias" in keys
    assert "bottleneck_layers.0.conv1.weight" not in keys
    features = small_features()
    assert torch.equal(head(features), head(features, torch.randn(2, 1280)))


def test_mixing_weights_are_a_softmax_over_layers():
    head = ReadoutHead(small_config()).eval()
    features, emb = small_features(), torch.randn(2, 1280)
    with torch.no_grad():
        head.mixing_weights.copy_(torch.tensor([0.0, 0.0, 50.0]))
        only_last = head.bottleneck_layers[2](features[2], emb)
    torch.testing.assert_close(head(features, emb), only_last, rtol=1e-4, atol=1e-4)


def test_input_errors_say_what_is_wrong():
    head = ReadoutHead(small_config()).eval()
    emb = torch.randn(2, 1280)
    with pytest.raises(ValueError, match="expects 3 feature maps"):
        head(small_features()[:2], emb)
    with pytest.raises(ValueError, match=r"channels \[256, 128, 128\]"):
        head(small_features(dims=(256, 128, 64)), emb)
    multi = ReadoutHead(small_config(save_timestep=(0, 500))).eval()
    assert multi.mixing_weights.shape == (6,)
    with pytest.raises(ValueError, match="only single-timestep heads"):
        multi(small_features(), emb)


def test_gradients_reach_every_feature_map():
    head = ReadoutHead(small_config(kind="depth", use_output_head=True)).eval().requires_grad_(False)
    features = [feature.requires_grad_(True) for feature in small_features(batch=1)]
    head(features, torch.randn(1, 1280)).square().mean().backward()
    assert all(feature.grad is not None and feature.grad.abs().sum() > 0 for feature in features)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_heads_follow_the_float32_result(dtype):
    head = ReadoutHead(small_config(kind="edge", use_output_head=True)).eval()
    features, emb = small_features(sizes=(4, 8, 8)), torch.randn(2, 1280)
    reference = head(features, emb)
    half = head.to(dtype)
    latent = torch.zeros(1, requires_grad=True)
    out = half([(feature + latent).to(dtype) for feature in features], emb)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0)
    out.float().sum().backward()
    assert latent.grad is not None and torch.isfinite(latent.grad).all()


def saved_bytes(run) -> int:
    """Bytes that autograd keeps for the backward while `run()` builds its graph."""
    kept = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return sum(kept), out


@pytest.mark.parametrize("use_output_head", [True, False])
def test_checkpointed_layers_give_the_same_gradients_and_keep_a_fraction(use_output_head):
    """The guided pass checkpoints each layer: same readout and gradients (features, emb, weights), and the backward
    keeps the inputs instead of every resized layer's activations."""
    kind = "depth" if use_output_head else "appearance"
    head = ReadoutHead(small_config(kind=kind, use_output_head=use_output_head))
    features, emb = small_features(batch=1, sizes=(8, 16, 16)), torch.randn(1, 1280)
    results = {}
    for checkpointed in (False, True):
        head.zero_grad()
        inputs = [feature.clone().requires_grad_(True) for feature in features]
        kept, out = saved_bytes(lambda: head(inputs, emb, output_size=(64, 64), checkpoint_layers=checkpointed))
        out.square().mean().backward()
        results[checkpointed] = (kept, out.detach(), [i.grad for i in inputs],
                                 [p.grad.clone() for p in head.parameters() if p.grad is not None])
    (plain_kept, plain_out, plain_inputs, plain_params), (kept, out, inputs, params) = results[False], results[True]
    torch.testing.assert_close(out, plain_out)
    for a, b in zip(inputs + params, plain_inputs + plain_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(params) == len(plain_params) > 0
    assert kept < 0.25 * plain_kept, f"checkpointed head kept {kept} bytes of {plain_kept}"
