"""Readout head files: official `.pt` checkpoints (read without unpickling code) and our `.safetensors`.

Official: a dict with `config` and `aggregation_network` (`step`, `optimizer_state_dict` ignored).
Ours: the state dict as tensors, the HeadConfig as JSON metadata.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from typing import Any, Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ReadoutError
from .architecture import (
    FAMILY_LABELS,
    HEAD_KINDS,
    MODEL_FAMILIES,
    SPATIAL_KINDS,
    HeadConfig,
    ReadoutHead,
)

SAFETENSORS_FORMAT = "readout_head/1"
CONFIG_METADATA_KEY = "readout_head_config"
FORMAT_METADATA_KEY = "format"
OFFICIAL_SUFFIXES = (".pt", ".pth", ".ckpt")
RELATIVE_KINDS = tuple(kind for kind in HEAD_KINDS if kind not in SPATIAL_KINDS)
MAX_LISTED_KEYS = 8
OFFICIAL_NUM_LAYERS = {"sd15": 12, "sdxl": 9}
"""Decoder layers of the released heads per family (an official config without model_id is told by them)."""
TRAINING_STATE_SUFFIX = ".state.pt"  # the trainer's resume file beside a head: not a head

StateDict = dict[str, torch.Tensor]


class HeadFileError(ReadoutError):
    """A readout head file cannot be read, is refused for safety, or does not match its config."""


class HeadModelMismatch(ReadoutError):
    """A readout head was trained on another model family or decoder layout than the model it is used with."""


def load_head_file(path: str | os.PathLike[str], kind: str | None = None) -> tuple[HeadConfig, StateDict]:
    """Read an official `.pt` or our `.safetensors` head file; `kind` sets the kind of an official head."""
    path = os.fspath(path)
    file_name = os.path.basename(path)
    if not os.path.isfile(path):
        raise HeadFileError(f"{file_name}: file not found ({path})")
    if kind is not None and kind not in HEAD_KINDS:
        raise HeadFileError(f"unknown head kind {kind!r}: use one of {', '.join(HEAD_KINDS)}")
    if path.lower().endswith(".safetensors"):
        if kind is not None:
            raise HeadFileError(f"{file_name}: a .safetensors head records its kind; it cannot be overridden")
        return _load_safetensors(path)
    if path.lower().endswith(OFFICIAL_SUFFIXES):
        return _load_official(path, kind)
    raise HeadFileError(f"{file_name}: expected a .safetensors or an official .pt readout head file")


def build_head(config: HeadConfig, state_dict: Mapping[str, torch.Tensor]) -> ReadoutHead:
    """Build a frozen eval-mode head with exactly these weights; its tensors are normal ones even under
    `torch.inference_mode()`, so the sampler can differentiate through it."""
    check_state_dict(config, state_dict)
    with torch.inference_mode(False):
        with torch.device("meta"):
            head = ReadoutHead(config)
        head.to_empty(device="cpu").load_state_dict(state_dict, strict=True)
    head.requires_grad_(False)
    return head.train(False)


def check_state_dict(config: HeadConfig, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise HeadFileError listing missing and unexpected keys and shape mismatches; no extra key is tolerated,
    as the official networks register no buffers (their `logit_scale` is a plain attribute, not saved)."""
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in ReadoutHead(config).state_dict().items()}
    not_tensors = sorted(name for name, value in state_dict.items() if not isinstance(value, torch.Tensor))
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    reshaped = [
        f"{name}: file {tuple(state_dict[name].shape)}, head {expected[name]}"
        for name in sorted(set(expected) & set(state_dict))
        if name not in not_tensors and tuple(state_dict[name].shape) != expected[name]
    ]
    problems = [
        _listing("values that are not tensors", not_tensors),
        _listing("missing keys", missing),
        _listing("unexpected keys", unexpected),
        _listing("shape mismatches", reshaped),
    ]
    problems = [problem for problem in problems if problem]
    if problems:
        raise HeadFileError(
            f"weights do not match a {config.kind} head with decoder channels {list(config.dims)}:\n"
            + "\n".join(problems)
        )


def check_finite_weights(state_dict: Mapping[str, torch.Tensor], file_name: str) -> None:
    """Raise HeadFileError naming the weights that hold NaN or infinite values (every guided step would be skipped)."""
    broken = sorted(name for name, tensor in state_dict.items()
                    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
                    and not bool(torch.isfinite(tensor).all()))
    if broken:
        raise HeadFileError(f"{file_name}: weights hold NaN or infinite values, the file is damaged or its training "
                            f"diverged; retrain the head or download it again\n{_listing('broken weights', broken)}")


def save_head_safetensors(
    path: str | os.PathLike[str], config: HeadConfig, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Write weights and config as a `.safetensors` readout head after checking they match."""
    check_state_dict(config, state_dict)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    metadata = {CONFIG_METADATA_KEY: json.dumps(config.to_dict()), FORMAT_METADATA_KEY: SAFETENSORS_FORMAT}
    save_file(tensors, os.fspath(path), metadata=metadata)


def check_head_matches_model(
    config: HeadConfig, family: str, model_dims: Sequence[int], head_name: str | None = None
) -> None:
    """Raise HeadModelMismatch unless the head was trained on this model family and decoder channel layout."""
    head = f"head {head_name!r}" if head_name else "the head"
    if family not in MODEL_FAMILIES:
        raise HeadModelMismatch(
            f"the model's family {family!r} is not one that readout heads exist for ({', '.join(FAMILY_LABELS.values())})"
        )
    if config.family != family:
        raise HeadModelMismatch(
            f"{head} expects {FAMILY_LABELS[config.family]} features ({config.num_layers} decoder "
            f"layers), but the model is {FAMILY_LABELS[family]}: load an {_official_prefix(family)} head"
        )
    if list(config.dims) != list(model_dims):
        raise HeadModelMismatch(
            f"{head} expects decoder channels {list(config.dims)} "
            f"but the model's decoder has {list(model_dims)}"
        )


def config_from_official(
    config: Mapping[str, Any], state_dict: Mapping[str, Any], file_name: str, kind: str | None = None
) -> HeadConfig:
    """Map an official training config to a HeadConfig (family from `model_id`, else from the layer count).

    Correspondence heads get use_emb False: the official drag guidance configs set it per edit, not in the head file.
    """
    for key in ("projection_dim", "dims", "save_timestep", "num_timesteps"):
        if key not in config:
            raise HeadFileError(f"{file_name}: not a readout head: missing key {key!r} in its config")
    aggregation = _mapping(config.get("aggregation_kwargs", {}), "aggregation_kwargs", file_name)
    dataset_args = _mapping(config.get("dataset_args", {}), "dataset_args", file_name)
    kind = kind or _official_kind(config, dataset_args, file_name)
    sequential = any(name.startswith("bottleneck_layers.0.0.") for name in state_dict)
    values = {
        "kind": kind,
        "family": _official_family(config, file_name),
        "dims": config["dims"],
        "projection_dim": config["projection_dim"],
        "num_timesteps": config["num_timesteps"],
        "save_timestep": config["save_timestep"],
        "use_output_head": aggregation.get("use_output_head", False),
        "output_head_channels": aggregation.get("output_head_channels", 3),
        "output_head_act": aggregation.get("output_head_act", True),
        "bottleneck_sequential": sequential,
        "use_emb": kind != "correspondence" and not sequential,
        "control_range": dataset_args.get("control_range", (-1.0, 1.0)),
        "sparse_loss": dataset_args.get("sparse_loss", False),
    }
    try:
        return HeadConfig(**values)
    except ValueError as error:
        raise HeadFileError(f"{file_name}: {error}") from error


def _load_official(path: str, kind: str | None) -> tuple[HeadConfig, StateDict]:
    file_name = os.path.basename(path)
    checkpoint = _safe_torch_load(path, file_name)
    if not isinstance(checkpoint, dict):
        raise HeadFileError(f"{file_name}: not a readout head: expected a dict, found {type(checkpoint).__name__}")
    for key in ("config", "aggregation_network"):
        if key not in checkpoint:
            raise HeadFileError(f"{file_name}: not a readout head: missing key {key!r}")
    config = _mapping(checkpoint["config"], "config", file_name)
    state_dict = _mapping(checkpoint["aggregation_network"], "aggregation_network", file_name)
    return config_from_official(config, state_dict, file_name, kind), dict(state_dict)


def _safe_torch_load(path: str, file_name: str) -> Any:
    with open(path, "rb") as handle:
        is_pickle = handle.read(1) == b"\x80"
    if not (is_pickle or zipfile.is_zipfile(path)):
        raise HeadFileError(f"{file_name}: truncated or not a readout head file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise HeadFileError(
            f"{file_name}: refused for safety: the file contains pickled code or objects, and only tensors and "
            f"plain containers are read. If you trust its source, convert it with a trusted script to a "
            f".safetensors readout head."
        ) from error
    except Exception as error:
        raise HeadFileError(f"{file_name}: truncated or not a readout head file ({error})") from error


def _load_safetensors(path: str) -> tuple[HeadConfig, StateDict]:
    file_name = os.path.basename(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state_dict = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise HeadFileError(f"{file_name}: truncated or not a readout head file ({error})") from error
    for key in (FORMAT_METADATA_KEY, CONFIG_METADATA_KEY):
        if key not in metadata:
            raise HeadFileError(f"{file_name}: not a readout head: missing metadata key {key!r}")
    if metadata[FORMAT_METADATA_KEY] != SAFETENSORS_FORMAT:
        raise HeadFileError(
            f"{file_name}: unsupported head format {metadata[FORMAT_METADATA_KEY]!r} (this version reads "
            f"{SAFETENSORS_FORMAT!r}); update the node pack"
        )
    try:
        config = HeadConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    except ValueError as error:
        raise HeadFileError(f"{file_name}: invalid head config: {error}") from error
    return config, state_dict


def _official_kind(config: Mapping[str, Any], dataset_args: Mapping[str, Any], file_name: str) -> str:
    """`dataset_args.control_type`, else the run name (`wandb_kwargs.name`, `id`), else the dataset layout
    (`points_root`: tracks, correspondence; `sdedit_root`: SDEdit triplets, appearance), else the file name."""
    control_type = dataset_args.get("control_type")
    if control_type is not None:
        if control_type not in SPATIAL_KINDS:
            raise HeadFileError(
                f"{file_name}: unsupported control_type {control_type!r}: spatial heads are "
                f"{', '.join(SPATIAL_KINDS)}"
            )
        return control_type
    wandb_kwargs = config.get("wandb_kwargs")
    run_names = [wandb_kwargs.get("name") if isinstance(wandb_kwargs, Mapping) else None, config.get("id")]
    for text in run_names:
        kind = _relative_kind_in(text)
        if kind:
            return kind
    if "points_root" in dataset_args:
        return "correspondence"
    if "sdedit_root" in dataset_args:
        return "appearance"
    kind = _relative_kind_in(file_name)
    if kind:
        return kind
    raise HeadFileError(
        f"{file_name}: cannot tell what this head reads out (no control_type or run name in its config): "
        f"rename the file to contain 'correspondence', 'appearance' or 'identity', or convert it with "
        f"`python -m readout.heads.convert {file_name} out.safetensors --kind KIND`"
    )


def _relative_kind_in(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    found = [kind for kind in RELATIVE_KINDS if kind in text.lower()]
    return found[0] if len(found) == 1 else None


def _official_family(config: Mapping[str, Any], file_name: str) -> str:
    model_id = config.get("model_id")
    if isinstance(model_id, str):
        return "sdxl" if "xl" in model_id.lower() else "sd15"
    dims = config["dims"]
    num_layers = len(dims) if isinstance(dims, (list, tuple)) else None
    for family, family_layers in OFFICIAL_NUM_LAYERS.items():
        if num_layers == family_layers:
            return family
    raise HeadFileError(f"{file_name}: cannot tell the model family: no model_id, and dims is {dims!r}")


def _official_prefix(family: str) -> str:
    return "sdv15" if family == "sd15" else family


def _mapping(value: Any, key: str, file_name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise HeadFileError(f"{file_name}: not a readout head: {key!r} is a {type(value).__name__}, not a dict")
    return value


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:MAX_LISTED_KEYS])
    more = f" (+{len(items) - MAX_LISTED_KEYS} more)" if len(items) > MAX_LISTED_KEYS else ""
    return f"  {title}: {shown}{more}"
