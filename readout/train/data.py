"""Training data: image/target folders (spatial heads), pair and triplet manifests (relative heads), checked
up front so that bad data fails with a message naming the file."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ReadoutError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LATENT_FACTOR = 8


class DataError(ReadoutError):
    """Training data is missing or malformed; the message names the file or folder and the fix."""


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from error


def load_image(path: str, resolution: int) -> torch.Tensor:
    """An RGB image as a (3, resolution, resolution) tensor in [0, 1]."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from error
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    if tensor.shape[-2:] != (resolution, resolution):
        tensor = F.interpolate(tensor[None], size=(resolution, resolution), mode="bilinear", align_corners=False,
                               antialias=True)[0].clamp(0, 1)
    return tensor


def check_resolution(resolution: int) -> int:
    """Training resolution must be a positive multiple of 8 (the VAE's downscale factor)."""
    if resolution <= 0 or resolution % LATENT_FACTOR:
        raise DataError(f"--resolution must be a positive multiple of {LATENT_FACTOR}, got {resolution}")
    return resolution


def _image_files(folder: str, role: str) -> list[str]:
    if not os.path.isdir(folder):
        raise DataError(f"{role} folder {folder} does not exist")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise DataError(f"{role} folder {folder} is empty: it holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    return names


@dataclass(frozen=True)
class SpatialExample:
    """One image and its control map (pose, depth or edge), as (3, H, W) tensors in [0, 1]."""

    image: torch.Tensor
    target: torch.Tensor


class SpatialDataset(Dataset):
    """Images in one folder, their target maps under the same file names in another."""

    def __init__(self, images_dir: str, targets_dir: str, resolution: int) -> None:
        self.resolution = check_resolution(resolution)
        self.images_dir, self.targets_dir = images_dir, targets_dir
        self.names = _image_files(images_dir, "images")
        _image_files(targets_dir, "targets")
        for name in self.names:
            target = os.path.join(targets_dir, name)
            if not os.path.isfile(target):
                raise DataError(f"{name}: no target map for image {os.path.join(images_dir, name)} "
                                f"(expected {target}: targets must have the image's file name)")
            image_wh, target_wh = image_size(os.path.join(images_dir, name)), image_size(target)
            if image_wh != target_wh:
                raise DataError(f"{name}: image {os.path.join(images_dir, name)} is {image_wh[0]}x{image_wh[1]} "
                                f"but its target {target} is {target_wh[0]}x{target_wh[1]}: they must match")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> SpatialExample:
        name = self.names[index]
        return SpatialExample(load_image(os.path.join(self.images_dir, name), self.resolution),
                              load_image(os.path.join(self.targets_dir, name), self.resolution))


def read_manifest(path: str, keys: Sequence[str]) -> list[dict[str, Any]]:
    """A JSON list of objects each holding `keys`; image paths are made absolute (relative to the manifest)."""
    if not os.path.isfile(path):
        raise DataError(f"manifest {path} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"manifest {path} is not valid JSON ({error})") from error
    if not isinstance(entries, list) or not entries:
        raise DataError(f"manifest {path} must be a non-empty JSON list of objects with keys {', '.join(keys)}")
    root = os.path.dirname(os.path.abspath(path))
    checked = []
    for index, entry in enumerate(entries):
        where = f"manifest {path}, entry {index}"
        if not isinstance(entry, dict) or any(key not in entry for key in keys):
            raise DataError(f"{where}: expected an object with keys {', '.join(keys)}, got {json.dumps(entry)[:200]}")
        entry = dict(entry)
        for key in keys:
            if key.startswith("points"):
                continue
            if not isinstance(entry[key], str):
                raise DataError(f"{where}: {key!r} must be an image path, got {entry[key]!r}")
            entry[key] = os.path.join(root, entry[key])
            if not os.path.isfile(entry[key]):
                raise DataError(f"{where}: image {entry[key]} does not exist")
        checked.append(entry)
    return checked


def _points(value: Any, size: tuple[int, int], where: str) -> torch.Tensor:
    """(P, 2) pixel points (x, y), each inside an image of size (width, height)."""
    try:
        points = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError) as error:
        raise DataError(f"{where}: points must be a list of [x, y] numbers ({error})") from error
    if points.ndim != 2 or points.shape[1] != 2 or not len(points):
        raise DataError(f"{where}: points must be a non-empty list of [x, y] pairs, got shape {tuple(points.shape)}")
    width, height = size
    outside = ((points[:, 0] < 0) | (points[:, 0] > width - 1) | (points[:, 1] < 0) | (points[:, 1] > height - 1))
    if outside.any():
        first = int(outside.nonzero()[0])
        raise DataError(f"{where}: point {first} {points[first].tolist()} is outside the {width}x{height} image")
    return points


@dataclass(frozen=True)
class PairExample:
    """Two frames and their matched points (P, 2: x, y) in training-resolution pixels."""

    image_a: torch.Tensor
    image_b: torch.Tensor
    points_a: torch.Tensor
    points_b: torch.Tensor


class PairDataset(Dataset):
    """Frame pairs with point tracks: `[{"a", "b", "points_a", "points_b"}]`, points in each image's pixels."""

    def __init__(self, manifest: str, resolution: int) -> None:
        self.resolution = check_resolution(resolution)
        self.entries = read_manifest(manifest, ("a", "b", "points_a", "points_b"))
        self.points: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index, entry in enumerate(self.entries):
            where = f"manifest {manifest}, entry {index}"
            sizes = image_size(entry["a"]), image_size(entry["b"])
            points_a = _points(entry["points_a"], sizes[0], f"{where}, points_a ({entry['a']})")
            points_b = _points(entry["points_b"], sizes[1], f"{where}, points_b ({entry['b']})")
            if len(points_a) != len(points_b):
                raise DataError(f"{where}: points_a has {len(points_a)} points but points_b {len(points_b)}: "
                                f"they must list matched points in the same order")
            self.points.append((self._scaled(points_a, sizes[0]), self._scaled(points_b, sizes[1])))

    def _scaled(self, points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        scale = torch.tensor([self.resolution / size[0], self.resolution / size[1]])
        return (points + 0.5) * scale - 0.5

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> PairExample:
        entry = self.entries[index]
        return PairExample(load_image(entry["a"], self.resolution), load_image(entry["b"], self.resolution),
                           *self.points[index])


@dataclass(frozen=True)
class TripletExample:
    """An anchor, a positive (same appearance) and a negative (other appearance), as (3, H, W) tensors."""

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor


class TripletDataset(Dataset):
    """Appearance/identity triplets: `[{"anchor", "positive", "negative"}]`."""

    def __init__(self, manifest: str, resolution: int) -> None:
        self.resolution = check_resolution(resolution)
        self.entries = read_manifest(manifest, ("anchor", "positive", "negative"))
        for index, entry in enumerate(self.entries):
            for key in ("anchor", "positive", "negative"):
                image_size(entry[key])

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> TripletExample:
        entry = self.entries[index]
        return TripletExample(*(load_image(entry[key], self.resolution) for key in ("anchor", "positive", "negative")))


Example = SpatialExample | PairExample | TripletExample


def collate(examples: list[Example]) -> list[Example]:
    """Keep a batch as a list of examples: pairs may carry different numbers of points."""
    return examples
