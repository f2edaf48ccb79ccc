"""A training dataset built in the graph: a folder the dataset nodes append to, in the layouts the trainer reads
(`images/` + `targets/`, `pairs.json`, `triplets.json`), with `readout_dataset.json` saying its kind and count."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..heads.architecture import HEAD_KINDS, SPATIAL_KINDS
from .data import DataError, PairDataset, SpatialDataset, TripletDataset

DATASET_FILE = "readout_dataset.json"
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
TRIPLET_ROLES = ("anchor", "positive", "negative")


def layout_of(kind: str) -> str:
    """How a kind's examples are stored: spatial maps, point-matched pairs or triplets."""
    if kind in SPATIAL_KINDS:
        return "spatial"
    return "pairs" if kind == "correspondence" else "triplets"


def check_name(name: str, input_name: str, example: str) -> str:
    """A dataset or head name is one file or folder name: letters, digits, '_', '-', '.'."""
    name = (name or "").strip()
    if not re.fullmatch(NAME_PATTERN, name) or ".." in name:
        raise DataError(f"{input_name}: {name!r} is not a usable name; use letters, digits, '_', '-' or '.' "
                        f"(no slashes), e.g. {example}")
    return name


def _save_png(image: torch.Tensor, path: str) -> None:
    """An (H, W, C) image in [0, 1] as an 8-bit RGB PNG (a single channel is repeated)."""
    array = image.detach().float().cpu().clamp(0, 1).numpy()
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    Image.fromarray((array[..., :3] * 255).round().astype(np.uint8)).save(path)


@dataclass(frozen=True)
class DatasetFolder:
    """One dataset folder: its name, path and the head kind its examples train."""

    name: str
    path: str
    kind: str

    @property
    def meta_path(self) -> str:
        return os.path.join(self.path, DATASET_FILE)

    @classmethod
    def open(cls, root: str, name: str, kind: str | None = None, create: bool = False) -> DatasetFolder:
        """The dataset `name` under `root`; created for `kind` when asked and missing; refuses another kind."""
        name = check_name(name, "dataset_name", "my_edge_data")
        path = os.path.join(root, name)
        meta = os.path.join(path, DATASET_FILE)
        if not os.path.isfile(meta):
            if not create:
                raise DataError(f"dataset {name!r}: no dataset at {path}; build it with a Readout dataset node first")
            if os.path.isdir(path) and os.listdir(path):
                raise DataError(f"dataset_name: {path} exists and is not a readout dataset; choose another "
                                "dataset_name (nothing in that folder is touched)")
            if kind not in HEAD_KINDS:
                raise DataError(f"kind: {kind!r} is not one of {', '.join(HEAD_KINDS)}")
            os.makedirs(path, exist_ok=True)
            folder = cls(name, path, kind)
            folder._write_meta(0)
            return folder
        with open(meta, encoding="utf-8") as handle:
            saved = json.load(handle)
        folder = cls(name, path, saved["kind"])
        if kind is not None and kind != folder.kind:
            raise DataError(f"dataset_name: {name!r} holds {folder.kind} examples, not {kind}; choose another "
                            f"dataset_name for {kind} examples")
        return folder

    @property
    def count(self) -> int:
        """How many examples the folder holds."""
        with open(self.meta_path, encoding="utf-8") as handle:
            return int(json.load(handle)["count"])

    def _write_meta(self, count: int) -> None:
        temporary = self.meta_path + ".part"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"kind": self.kind, "layout": layout_of(self.kind), "count": count}, handle, indent=1)
        os.replace(temporary, self.meta_path)

    def _manifest(self) -> tuple[str, list[dict]]:
        path = os.path.join(self.path, f"{layout_of(self.kind)}.json")
        if not os.path.isfile(path):
            return path, []
        with open(path, encoding="utf-8") as handle:
            return path, json.load(handle)

    def _append_manifest(self, entries: list[dict]) -> int:
        path, existing = self._manifest()
        existing += entries
        with open(path + ".part", "w", encoding="utf-8") as handle:
            json.dump(existing, handle)
        os.replace(path + ".part", path)
        self._write_meta(len(existing))
        return len(existing)

    def add_spatial(self, images: torch.Tensor, labels: torch.Tensor) -> int:
        """Append (B, H, W, C) images and their label maps (same count and size); returns the new count."""
        for sub in ("images", "targets"):
            os.makedirs(os.path.join(self.path, sub), exist_ok=True)
        start = self.count
        for offset, (image, label) in enumerate(zip(images, labels)):
            file_name = f"{start + offset:06d}.png"
            _save_png(label, os.path.join(self.path, "targets", file_name))
            _save_png(image, os.path.join(self.path, "images", file_name))
        self._write_meta(start + len(images))
        return start + len(images)

    def add_pairs(self, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> int:
        """Append (image_a, image_b, points_a, points_b) pairs, points (P, 2) in each image's pixels."""
        os.makedirs(os.path.join(self.path, "frames"), exist_ok=True)
        start = self.count
        entries = []
        for offset, (image_a, image_b, points_a, points_b) in enumerate(pairs):
            names = [f"frames/{start + offset:06d}_{side}.png" for side in ("a", "b")]
            _save_png(image_a, os.path.join(self.path, names[0]))
            _save_png(image_b, os.path.join(self.path, names[1]))
            entries.append({"a": names[0], "b": names[1], "points_a": points_a.round(decimals=2).tolist(),
                            "points_b": points_b.round(decimals=2).tolist()})
        return self._append_manifest(entries)

    def add_triplets(self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> int:
        """Append anchor / positive / negative images (three (B, H, W, C) batches of one count)."""
        os.makedirs(os.path.join(self.path, "triplets"), exist_ok=True)
        start = self.count
        entries = []
        for offset, images in enumerate(zip(anchors, positives, negatives)):
            entry = {}
            for role, image in zip(TRIPLET_ROLES, images):
                entry[role] = f"triplets/{start + offset:06d}_{role}.png"
                _save_png(image, os.path.join(self.path, entry[role]))
            entries.append(entry)
        return self._append_manifest(entries)

    def training_set(self, resolution: int) -> Dataset:
        """The trainer's dataset over this folder's examples; refuses an empty folder."""
        if self.count == 0:
            raise DataError(f"dataset {self.name!r} is empty (0 examples at {self.path}); queue its dataset node with "
                            "images first")
        layout = layout_of(self.kind)
        if layout == "spatial":
            return SpatialDataset(os.path.join(self.path, "images"), os.path.join(self.path, "targets"), resolution)
        manifest = self._manifest()[0]
        return PairDataset(manifest, resolution) if layout == "pairs" else TripletDataset(manifest, resolution)

    def describe(self) -> str:
        return f"dataset {self.name}: {self.count} {self.kind} example(s) in {self.path}"


def dataset_names(root: str) -> list[str]:
    """The dataset folders under `root`."""
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, DATASET_FILE)))
