"""Drag point pairs: parsing the points editor's JSON and checking it against the image."""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class DragPair:
    """Move the content at `source` to `target` (image pixels, x right, y down)."""

    source: tuple[float, float]
    target: tuple[float, float]


def _point(value, where: str) -> tuple[float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
        raise ValueError(f"{where} must be [x, y] in pixels, got {json.dumps(value)}")
    return float(value[0]), float(value[1])


def parse_drag_pairs(text: str, input_name: str = "points") -> list[DragPair]:
    """Pairs from JSON: [{"source": [x, y], "target": [x, y]}, ...] (or [[sx, sy], [tx, ty]] items)."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{input_name}: not valid JSON ({error.msg} at character {error.pos}); expected "
                         '[{"source": [x, y], "target": [x, y]}, ...]') from error
    except RecursionError as error:
        raise ValueError(f"{input_name}: the JSON is nested too deeply to be point pairs; expected "
                         '[{"source": [x, y], "target": [x, y]}, ...]') from error
    if not isinstance(data, list):
        raise ValueError(f"{input_name}: expected a list of point pairs, got {type(data).__name__}")
    pairs = []
    for index, item in enumerate(data):
        where = f"{input_name}: pair {index + 1}"
        if isinstance(item, dict):
            missing = [k for k in ("source", "target") if k not in item]
            if missing:
                raise ValueError(f"{where} has no {' and no '.join(missing)}: every source needs a target")
            pairs.append(DragPair(_point(item["source"], f"{where} source"), _point(item["target"], f"{where} target")))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append(DragPair(_point(item[0], f"{where} source"), _point(item[1], f"{where} target")))
        else:
            raise ValueError(f"{where}: expected {{\"source\": [x, y], \"target\": [x, y]}}, got {json.dumps(item)}: "
                             "every source needs a target")
    return pairs


def check_inside(pairs: list[DragPair], width: int, height: int, input_name: str = "points") -> None:
    """Refuse points outside the reference image, naming the pair and the image size."""
    for index, pair in enumerate(pairs):
        for role, (x, y) in (("source", pair.source), ("target", pair.target)):
            if not (0 <= x < width and 0 <= y < height):
                raise ValueError(f"{input_name}: pair {index + 1} {role} ({x:g}, {y:g}) is outside the "
                                 f"{width}x{height} reference image")

