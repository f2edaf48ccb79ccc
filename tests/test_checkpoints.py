"""Head files: official `.pt` checkpoints load strictly and safely, convert to `.safetensors`, and errors explain."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from helpers import pack_module

convert = pack_module("readout.heads.convert")
files = pack_module("readout.heads.files")
HeadFileError, HeadModelMismatch = files.HeadFileError, files.HeadModelMismatch
build_head, check_head_matches_model = files.build_head, files.check_head_matches_model
load_head_file, save_head_safetensors = files.load_head_file, files.save_head_safetensors

SD15_DIMS = [1280] * 6 + [640] * 3 + [320] * 3
SDXL_DIMS = [1280] * 3 + [640] * 3 + [320] * 3
SD15_SIZES = [8] * 3 + [16] * 3 + [32] * 3 + [64] * 3
SDXL_SIZES = [16] * 3 + [32] * 3 + [64] * 3
SD15_ID = "runwayml/stable-diffusion-v1-5"
SDXL_ID = "stabilityai/stable-diffusion-xl-base-1.0"
PROJECTION, BOTTLENECK, EMB = 384, 96, 1280


# ---- the official file layout, written from official_heads.md (not from our module) ----

def official_weights(dims, output_head: bool, sequential: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """An `aggregation_network` state dict with the official key names and shapes and random values."""
    gen = torch.Generator().manual_seed(seed)

    def weight(*shape):
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else shape[-1]
        return torch.randn(*shape, generator=gen) / fan_in**0.5

    def small(*shape, around=0.0):
        return around + 0.1 * torch.randn(*shape, generator=gen)

    weights = {"mixing_weights": torch.randn(len(dims), generator=gen)}
    for index, dim in enumerate(dims):
        prefix = f"bottleneck_layers.{index}.0" if sequential else f"bottleneck_layers.{index}"
        convs = {
            "conv1": (BOTTLENECK, dim, 1),
            "conv2": (BOTTLENECK, BOTTLENECK, 3),
            "conv3": (PROJECTION, BOTTLENECK, 1),
        }
        if dim != PROJECTION:
            convs["shortcut"] = (PROJECTION, dim, 1)
        for name, (out_channels, in_channels, kernel) in convs.items():
            weights[f"{prefix}.{name}.weight"] = weight(out_channels, in_channels, kernel, kernel)
            weights[f"{prefix}.{name}.norm.weight"] = small(out_channels, around=1.0)
            weights[f"{prefix}.{name}.norm.bias"] = small(out_channels)
        weights[f"{prefix}.emb_layers.weight"] = weight(BOTTLENECK, EMB)
        weights[f"{prefix}.emb_layers.bias"] = small(BOTTLENECK)
    if output_head:
        layers = {0: (128, PROJECTION, 3), 2: (32, 128, 3), 4: (3, 32, 1)}
        for index, (out_channels, in_channels, kernel) in layers.items():
            weights[f"output_head.{index}.weight"] = weight(out_channels, in_channels, kernel, kernel)
            weights[f"output_head.{index}.bias"] = small(out_channels)
    return weights


def official_config(dims, model_id: str | None, output_head: bool, dataset_args: dict, **extra) -> dict:
    """A training config as the official scripts save it, junk keys included."""
    config = {
        "model_id": model_id,
        "diffusion_mode": "generation",
        "num_timesteps": 1000,
        "save_timestep": [0],
        "prompt": "",
        "negative_prompt": "",
        "guidance_scale": -1,
        "projection_dim": PROJECTION,
        "aggregation_kwargs": {
            "use_output_head": output_head,
            "output_head_channels": 3,
            "bottleneck_sequential": False,
        },
        "weight_decay": 0,
        "max_steps": 5000,
        "lr": 1e-3,
        "batch_size": 8,
        "train_file": ["annotations/PascalVOC_train.json"],
        "dataset_args": {"bucket_root": "data", "image_root": "raw/PascalVOC", **dataset_args},
        "wandb_kwargs": {"entity": "someone", "project": "readout_training", "name": "run"},
        "results_folder": "runs",
        "output_resolution": 64,
        "load_resolution": 512,
        "id": "3xk9_run",
        "dims": list(dims),
    }
    if model_id is None:
        del config["model_id"]
    config.update(extra)
    return config


def write_official(path, config: dict, weights: dict[str, torch.Tensor]) -> str:
    optimizer_state = {
        "state": {0: {"step": torch.tensor(5000.0), "exp_avg": torch.randn(3)}},
        "param_groups": [{"lr": 1e-3, "weight_decay": 0, "params": [0, 1, 2]}],
    }
    torch.save(
        {"step": 5000, "config": config, "aggregation_network": weights, "optimizer_state_dict": optimizer_state},
        path,
    )
    return str(path)


def reference_readout(weights, dims, features, emb, size, sequential: bool = False) -> torch.Tensor:
    """The official forward, written with functional ops from the spec, at output size `size`."""

    def conv_norm(x, name, padding=0):
        x = F.conv2d(x, weights[f"{name}.weight"], padding=padding)
        return F.group_norm(x, 32, weights[f"{name}.norm.weight"], weights[f"{name}.norm.bias"])

    mixing = torch.softmax(weights["mixing_weights"], dim=0)
    total = 0
    for index, (dim, feature) in enumerate(zip(dims, features)):
        prefix = f"bottleneck_layers.{index}.0" if sequential else f"bottleneck_layers.{index}"
        x = F.interpolate(feature, size=size, mode="bilinear")
        out = F.relu(conv_norm(x, f"{prefix}.conv1"))
        if emb is not None:
            emb_out = F.linear(emb, weights[f"{prefix}.emb_layers.weight"], weights[f"{prefix}.emb_layers.bias"])
            out = out + F.relu(emb_out)[:, :, None, None]
        out = conv_norm(F.relu(conv_norm(out, f"{prefix}.conv2", padding=1)), f"{prefix}.conv3")
        skip = conv_norm(x, f"{prefix}.shortcut") if dim != PROJECTION else x
        total = total + mixing[index] * F.relu(out + skip)
    if "output_head.0.weight" not in weights:
        return total
    out = F.silu(F.conv2d(total, weights["output_head.0.weight"], weights["output_head.0.bias"], padding=1))
    out = F.silu(F.conv2d(out, weights["output_head.2.weight"], weights["output_head.2.bias"], padding=1))
    return torch.tanh(F.conv2d(out, weights["output_head.4.weight"], weights["output_head.4.bias"]))


def features_for(dims, sizes, batch: int, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, size, size, generator=gen) for dim, size in zip(dims, sizes)]


@pytest.fixture(scope="module")
def sd15_pose(tmp_path_factory):
    weights = official_weights(SD15_DIMS, output_head=True)
    dataset_args = {"control_type": "pose", "sparse_loss": True, "control_range": (-0.5, 0.5)}
    run = {"name": "readout_sdv15_spatial_pose"}
    config = official_config(SD15_DIMS, SD15_ID, True, dataset_args, wandb_kwargs=run)
    return write_official(tmp_path_factory.mktemp("heads") / "readout_sdv15_spatial_pose.pt", config, weights), weights


def small_relative_head(path, dataset_args=None, **extra) -> str:
    """A relative head on two SD1.5-style layers: small, and with no spatial control type."""
    config = official_config([640, 320], SD15_ID, False, dataset_args or {}, **extra)
    return write_official(path, config, official_weights([640, 320], output_head=False))


# ---- the user's story: load an official head, read out, convert ----

def test_official_sd15_pose_head_loads_strictly_and_reads_out_a_pose_map(sd15_pose):
    path, weights = sd15_pose
    config, state_dict = load_head_file(path)
    assert (config.kind, config.family, list(config.dims)) == ("pose", "sd15", SD15_DIMS)
    assert config.use_output_head and config.use_emb and not config.bottleneck_sequential
    assert config.control_range == (-0.5, 0.5) and config.sparse_loss
    assert set(state_dict) == set(weights)
    head = build_head(config, state_dict)
    features, emb = features_for(SD15_DIMS, SD15_SIZES, batch=2), torch.randn(2, EMB)
    with torch.no_grad():
        readout = head([feature[:1] for feature in features], emb[:1])
        small = head(features, emb, output_size=(8, 8))
        expected = reference_readout(weights, SD15_DIMS, features, emb, (8, 8))
        expected_full = reference_readout(weights, SD15_DIMS, [feature[:1] for feature in features], emb[:1], (64, 64))
    assert readout.shape == (1, 3, 64, 64)
    torch.testing.assert_close(readout, expected_full, rtol=1e-4, atol=1e-4)
    assert small.shape == (2, 3, 8, 8)
    torch.testing.assert_close(small, expected, rtol=1e-4, atol=1e-4)


def test_official_sdxl_depth_head_reads_out_a_depth_map(tmp_path):
    weights = official_weights(SDXL_DIMS, output_head=True, seed=3)
    config = official_config(SDXL_DIMS, SDXL_ID, True, {"control_type": "depth", "sparse_loss": False})
    path = write_official(tmp_path / "readout_sdxl_spatial_depth.pt", config, weights)
    config, state_dict = load_head_file(path)
    assert (config.kind, config.family, config.num_layers) == ("depth", "sdxl", 9)
    assert config.control_range == (-1.0, 1.0) and not config.sparse_loss
    head = build_head(config, state_dict)
    features, emb = features_for(SDXL_DIMS, SDXL_SIZES, batch=1), torch.randn(1, EMB)
    with torch.no_grad():
        readout = head(features, emb)
        upsampled = head(features, emb, output_size=(32, 32))
        expected = reference_readout(weights, SDXL_DIMS, features, emb, (32, 32))
        expected_full = reference_readout(weights, SDXL_DIMS, features, emb, (64, 64))
    assert readout.shape == (1, 3, 64, 64)
    torch.testing.assert_close(readout, expected_full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(upsampled, expected, rtol=1e-4, atol=1e-4)


def test_conversion_to_safetensors_gives_identical_readouts(sd15_pose, tmp_path, capsys):
    path, _ = sd15_pose
    target = str(tmp_path / "pose.safetensors")
    convert.main([path, target])
    assert "kind: pose, family: sd15, layers: 12" in capsys.readouterr().out
    official_config_, official_state = load_head_file(path)
    config, state_dict = load_head_file(target)
    assert config == official_config_
    features, emb = features_for(SD15_DIMS, SD15_SIZES, batch=1, seed=7), torch.randn(1, EMB)
    with torch.no_grad():
        converted = build_head(config, state_dict)(features, emb, output_size=(8, 8))
        assert torch.equal(converted, build_head(config, official_state)(features, emb, output_size=(8, 8)))


def test_head_built_under_inference_mode_can_be_differentiated(tmp_path):
    path = small_relative_head(tmp_path / "readout_sdv15_drag_appearance.pt")
    with torch.inference_mode():
        head = build_head(*load_head_file(path))
    assert all(not p.is_inference() and not p.requires_grad for p in head.parameters())
    features = [feature.requires_grad_(True) for feature in features_for([640, 320], [16, 32], batch=1)]
    head(features, torch.randn(1, EMB)).square().mean().backward()
    assert features[0].grad is not None and features[0].grad.abs().sum() > 0


# ---- relative heads: which kind, and whether they use the timestep embedding ----

@pytest.mark.parametrize(
    "file_name, hints, kind",
    [
        ("head_a.pt", {"wandb_kwargs": {"name": "readout_sdv15_drag_correspondence"}}, "correspondence"),
        ("head_b.pt", {"id": "q8z1_readout_sdv15_drag_appearance"}, "appearance"),
        ("head_c.pt", {"dataset_args": {"points_root": "pseudo_labels/DAVIS/cotracker"}}, "correspondence"),
        ("head_d.pt", {"dataset_args": {"sdedit_root": "pseudo_labels/DAVIS/sdedit"}}, "appearance"),
        ("my_identity_head.pt", {}, "identity"),
    ],
)
def test_relative_head_kind_comes_from_config_or_file_name(tmp_path, file_name, hints, kind):
    dataset_args = hints.pop("dataset_args", {})
    config, _ = load_head_file(small_relative_head(tmp_path / file_name, dataset_args, **hints))
    assert config.kind == kind and not config.use_output_head and not config.is_spatial
    assert config.use_emb == (kind != "correspondence")


def test_unknown_kind_asks_to_rename_or_convert(tmp_path):
    path = small_relative_head(tmp_path / "head.pt")
    with pytest.raises(HeadFileError, match="cannot tell what this head reads out") as error:
        load_head_file(path)
    assert "rename" in str(error.value) and "--kind" in str(error.value)
    assert load_head_file(path, kind="appearance")[0].kind == "appearance"
    with pytest.raises(HeadFileError, match="unknown head kind 'segmentation'"):
        load_head_file(path, kind="segmentation")
    config = official_config([640, 320], SD15_ID, True, {"control_type": "segmentation"})
    weird = write_official(tmp_path / "seg.pt", config, official_weights([640, 320], output_head=True))
    with pytest.raises(HeadFileError, match="unsupported control_type 'segmentation'"):
        load_head_file(weird)


def test_sequential_layout_and_training_state_are_tolerated(tmp_path):
    weights = official_weights([640, 320], output_head=False, sequential=True)
    config = official_config([640, 320], SD15_ID, False, {}, aggregation_kwargs={"bottleneck_sequential": True})
    config, state_dict = load_head_file(write_official(tmp_path / "old_appearance.pt", config, weights))
    assert config.bottleneck_sequential and not config.use_emb and config.kind == "appearance"
    features = features_for([640, 320], [16, 32], batch=1)
    with torch.no_grad():
        readout = build_head(config, state_dict)(features, torch.randn(1, EMB))
        expected = reference_readout(weights, [640, 320], features, None, (32, 32), sequential=True)
    torch.testing.assert_close(readout, expected, rtol=1e-4, atol=1e-4)


# ---- files that must be refused, with a message that says why ----

class WritesMarkerFile:
    def __init__(self, marker: str, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "open":
            return (open, (self.marker, "w"))
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout, how", [("torch_zip", "open"), ("raw_pickle", "system")])
def test_pickled_code_is_refused_without_running_it(tmp_path, layout, how):
    marker = str(tmp_path / "pwned")
    payload = {"config": {"dims": [320]}, "aggregation_network": {"x": WritesMarkerFile(marker, how)}}
    path = tmp_path / "readout_sdv15_spatial_pose.pt"
    if layout == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(HeadFileError, match="refused for safety: the file contains pickled code"):
        load_head_file(path)
    assert not os.path.exists(marker)


def test_truncated_or_foreign_files_are_named_as_such(sd15_pose, tmp_path):
    data = open(sd15_pose[0], "rb").read()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    save_head_safetensors(tmp_path / "ok.safetensors", *load_head_file(small_relative_head(tmp_path / "appearance.pt")))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    for name in ("cut.pt", "notes.pt", "empty.pt", "cut.safetensors"):
        with pytest.raises(HeadFileError, match="truncated or not a readout head file"):
            load_head_file(tmp_path / name)
    with pytest.raises(HeadFileError, match="file not found"):
        load_head_file(tmp_path / "missing.pt")


def test_dicts_that_are_not_heads_name_the_missing_key(tmp_path):
    weights = official_weights([640, 320], output_head=False)
    config = official_config([640, 320], SD15_ID, False, {}, id="readout_sdv15_drag_appearance")
    cases = {
        "no_weights.pt": ({"step": 1, "config": config}, "missing key 'aggregation_network'"),
        "no_config.pt": ({"aggregation_network": weights}, "missing key 'config'"),
        "no_dims.pt": ({"config": {k: v for k, v in config.items() if k != "dims"}, "aggregation_network": weights},
                       "missing key 'dims'"),
        "tensor.pt": (torch.zeros(3), "not a readout head: expected a dict"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(HeadFileError, match=message):
            load_head_file(tmp_path / name)


def test_safetensors_without_our_metadata_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"mixing_weights": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(HeadFileError, match="missing metadata key"):
        load_head_file(tmp_path / "plain.safetensors")
    meta = {"format": "readout_head/9", "readout_head_config": "{}"}
    save_file({"mixing_weights": torch.ones(2)}, str(tmp_path / "future.safetensors"), metadata=meta)
    with pytest.raises(HeadFileError, match="unsupported head format 'readout_head/9'"):
        load_head_file(tmp_path / "future.safetensors")


def test_weights_that_do_not_match_the_config_are_listed(tmp_path):
    config, state_dict = load_head_file(small_relative_head(tmp_path / "appearance.pt"))
    del state_dict["bottleneck_layers.1.conv2.weight"]
    state_dict["logit_scale"] = torch.tensor(2.6)
    state_dict["bottleneck_layers.0.emb_layers.weight"] = torch.zeros(96, 768)
    with pytest.raises(HeadFileError) as error:
        build_head(config, state_dict)
    message = str(error.value)
    assert "missing keys: bottleneck_layers.1.conv2.weight" in message
    assert "unexpected keys: logit_scale" in message
    assert "bottleneck_layers.0.emb_layers.weight: file (96, 768), head (96, 1280)" in message


# ---- a head must match the model it guides ----

def test_head_and_model_must_agree_on_family_and_decoder_channels(tmp_path):
    sdxl = official_config(SDXL_DIMS, SDXL_ID, True, {"control_type": "pose"})
    path = write_official(tmp_path / "readout_sdxl_spatial_pose.pt", sdxl, {})
    with pytest.raises(HeadFileError, match=r"missing keys: bottleneck_layers.0.conv1.norm.bias, .* \(\+125 more\)"):
        build_head(*load_head_file(path))
    config, _ = load_head_file(path)
    check_head_matches_model(config, "sdxl", SDXL_DIMS)
    with pytest.raises(HeadModelMismatch) as error:
        check_head_matches_model(config, "sd15", SD15_DIMS, head_name="readout_sdxl_spatial_pose")
    assert str(error.value) == (
        "head 'readout_sdxl_spatial_pose' expects SDXL features (9 decoder layers), "
        "but the model is SD1.5: load an sdv15 head"
    )
    with pytest.raises(HeadModelMismatch) as error:
        check_head_matches_model(config, "sdxl", [640, 320])
    assert str(error.value) == (
        f"the head expects decoder channels {SDXL_DIMS} but the model's decoder has [640, 320]"
    )
