"""The heads the authors released (the `weights/` folder of their Hugging Face repository g-luo/readout-guidance):
five kinds for SD1.5 and SDXL, and where each downloads from."""
from __future__ import annotations

OFFICIAL_KINDS = ("spatial_pose", "spatial_depth", "spatial_edge", "drag_correspondence", "drag_appearance")
OFFICIAL_HEAD_NAMES = tuple(f"readout_{family}_{kind}.pt" for family in ("sdv15", "sdxl") for kind in OFFICIAL_KINDS)


def official_head_url(name: str) -> str | None:
    """The download address of an official head file, or None for any other name."""
    if name not in OFFICIAL_HEAD_NAMES:
        return None
    return f"https://huggingface.co/g-luo/readout-guidance/resolve/main/weights/{name}"
