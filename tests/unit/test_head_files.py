"""Reading head files: our safetensors round trip, the official .pt layout, and errors that name the file and fix."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from readout.heads.architecture import HeadConfig, ReadoutHead
from readout.heads.files import (CONFIG_METADATA_KEY, FORMAT_METADATA_KEY, HeadFileError, build_head,
                                 check_finite_weights, load_head_file, save_head_safetensors)

DIMS = (256, 128, 128)


def small_head(kind: str = "depth", **overrides) -> tuple[HeadConfig, dict]:
    values = dict(kind=kind, family="sd15", dims=DIMS, projection_dim=128, use_output_head=kind in ("depth", "pose"))
    values.update(overrides)
    config = HeadConfig(**values)
    torch.manual_seed(0)
    return config, ReadoutHead(config).state_dict()


def test_safetensors_round_trip_keeps_config_and_weights(tmp_path):
    config, state = small_head(control_range=(-0.5, 0.5))
    path = tmp_path / "depth.safetensors"
    save_head_safetensors(path, config, state)
    loaded_config, loaded_state = load_head_file(path)
    assert loaded_config == config
    assert all(torch.equal(loaded_state[k], state[k]) for k in state)
    head = build_head(loaded_config, loaded_state)
    assert not head.training and not any(p.requires_grad for p in head.parameters())


def test_heads_built_under_inference_mode_stay_differentiable(tmp_path):
    config, state = small_head()
    with torch.inference_mode():
        head = build_head(config, state)
    features = [torch.randn(1, dim, 4, 4, requires_grad=True) for dim in DIMS]
    head(features, torch.zeros(1, config.emb_dim)).sum().backward()
    assert all(f.grad is not None for f in features)


def test_official_checkpoint_layout_reads_kind_family_and_sequential_bottlenecks(tmp_path):
    config, state = small_head("correspondence", use_emb=False, bottleneck_sequential=True)
    official = {"config": {"projection_dim": 128, "dims": list(DIMS), "save_timestep": [0], "num_timesteps": 1000,
                           "model_id": "runwayml/stable-diffusion-v1-5", "wandb_kwargs": {"name": "sd15_correspondence"}},
                "aggregation_network": state}
    path = tmp_path / "head.pt"
    torch.save(official, path)
    loaded, _ = load_head_file(path)
    assert (loaded.kind, loaded.family, loaded.bottleneck_sequential, loaded.use_emb) == ("correspondence", "sd15",
                                                                                          True, False)
    official["config"]["model_id"] = "stabilityai/stable-diffusion-xl-base-1.0"
    official["config"].pop("wandb_kwargs")
    torch.save(official, path)
    with pytest.raises(HeadFileError, match="head.pt: cannot tell what this head reads out"):
        load_head_file(path)
    assert load_head_file(path, kind="appearance")[0].family == "sdxl"


def test_bad_files_are_refused_naming_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    config, state = small_head()
    save_file(dict(state), str(tmp_path / "plain.safetensors"))
    save_file(dict(state), str(tmp_path / "future.safetensors"),
              metadata={FORMAT_METADATA_KEY: "readout_head/9", CONFIG_METADATA_KEY: json.dumps(config.to_dict())})
    cases = {"missing.safetensors": "missing.safetensors: file not found",
             "notes.txt": "notes.txt: expected a .safetensors or an official .pt",
             "cut.safetensors": "cut.safetensors: truncated or not a readout head file",
             "plain.safetensors": "plain.safetensors: not a readout head: missing metadata key",
             "future.safetensors": "future.safetensors: unsupported head format 'readout_head/9'"}
    for name, message in cases.items():
        with pytest.raises(HeadFileError) as error:
            load_head_file(tmp_path / name)
        assert str(error.value).startswith(message)


def test_mismatched_and_broken_weights_are_listed():
    config, state = small_head()
    state = dict(state)
    state.pop("mixing_weights")
    state["extra"] = torch.zeros(1)
    with pytest.raises(HeadFileError, match=r"missing keys: mixing_weights(.|\n)*unexpected keys: extra"):
        save_head_safetensors("unused.safetensors", config, state)
    broken = {"a": torch.tensor([1.0, float("nan")]), "b": torch.ones(2), "steps": torch.tensor([3])}
    with pytest.raises(HeadFileError, match="head.safetensors: weights hold NaN(.|\n)*broken weights: a$"):
        check_finite_weights(broken, "head.safetensors")
