"""The guided pass's compute dtype: torch's autocast where the device runs it, a refusal by name where it cannot."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from ..errors import ReadoutError

COMPUTE_DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FLOAT32_AUTOCAST_DEVICES = ("cuda",)
"""Devices whose autocast raises lower-precision ops to float32; elsewhere torch disables it with a warning."""


class ComputeDtypeUnsupported(ReadoutError):
    """The chosen compute_dtype cannot run on this device or model."""


NO_BFLOAT16 = ("compute_dtype bfloat16: this GPU ({device}) has no bfloat16 arithmetic (NVIDIA cards before Ampere, "
               "RTX 30xx / A100); set compute_dtype to auto or float16")
NO_FLOAT32_AUTOCAST = ("compute_dtype float32: torch's autocast on {device} cannot raise a {dtype} model to float32, "
                       "so the setting would do nothing; load the model in float32 (launch ComfyUI with --fp32-unet) "
                       "or set compute_dtype to auto")


def device_supports_bfloat16(device: torch.device) -> bool:
    """False on a CUDA card without bfloat16 arithmetic; torch's autocast refuses it there."""
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


def check_compute_dtype(name: str, device: torch.device, model_dtype: torch.dtype) -> None:
    """Raise ComputeDtypeUnsupported where `name` would fail on `device` or silently do nothing to the model."""
    dtype = COMPUTE_DTYPES[name]
    if dtype is torch.bfloat16 and not device_supports_bfloat16(device):
        raise ComputeDtypeUnsupported(NO_BFLOAT16.format(device=device))
    if dtype is torch.float32 and device.type not in FLOAT32_AUTOCAST_DEVICES and model_dtype != torch.float32:
        raise ComputeDtypeUnsupported(NO_FLOAT32_AUTOCAST.format(device=device.type, dtype=model_dtype))


def model_compute_dtype(base_model) -> torch.dtype:
    """The dtype a ComfyUI model computes in: its manual cast dtype, else its weights'."""
    return getattr(base_model, "manual_cast_dtype", None) or base_model.get_dtype()


def compute_autocast(name: str, device: torch.device) -> AbstractContextManager:
    """The autocast of the guided pass (none for auto, and for float32 where a checked model already computes in it)."""
    dtype = COMPUTE_DTYPES[name]
    if dtype is None or dtype is torch.float32 and device.type not in FLOAT32_AUTOCAST_DEVICES:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
