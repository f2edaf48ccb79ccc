"""Effects of readout guidance on the learned world model, measured on decoded pixels by the colour-blob detector
(which shares no code with the heads). Every experiment runs the pack's real nodes, guided against the same seed
unguided, and returns one record per seed."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from testbed.nodes import call_node, pack_module
from world import paths
from world.detector import Blob, caption_objects, detect, foreground, iou, largest
from world.scenes import SIZE, random_scene

EVAL_SCENE_BASE = 9 * 10**8
STEPS = 12
CFG = 4.0
SAMPLER = ("ddim", "ddim_uniform")
FLUX_SAMPLER = ("euler", "simple")
ZIMAGE_STEPS = 8
ZIMAGE_CFG = 1.0
"""The world Z-Image samples as Z-Image Turbo does: 8 steps at CFG 1."""
QWEN_IMAGE_STEPS = 8
"""The world Qwen-Image-Edit samples as the edit models' lightning LoRAs do: 8 (or 4) steps at CFG 1."""
DRAG_POINTS = 5


def to_image(array: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) array in [0, 1] as a ComfyUI IMAGE batch of one."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]


@dataclass
class World:
    """The world model (the SD1.5 checkpoint, the world's Flux or its Z-Image) and its heads, loaded through the
    pack's and ComfyUI's loader nodes."""

    model: Any
    clip: Any
    vae: Any
    heads: dict[str, Any]
    sampler: tuple[str, str] = SAMPLER
    latent_node: str = "EmptyLatentImage"
    steps: int = STEPS
    cfg: float = CFG
    recurrence: int = 0
    """Guided passes per guided step: 0, the node's auto (two at 8 steps or fewer)."""
    unguided_images: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)
    """Unguided samples by (seed, prompt, steps, cfg): experiments on the same seed and caption share one KSampler
    run."""

    @classmethod
    def load(cls, family: str = "sd15") -> "World":
        import folder_paths

        if family in ("zimage", "qwen_image"):
            from testbed import MODELS_DIR
            from world.assemble import write_world_models

            # the model and heads trained since the setup ran
            write_world_models(MODELS_DIR, zimage=family == "zimage", qwen_image=family == "qwen_image")
        listed = set(folder_paths.get_filename_list("readout_heads"))
        heads = {k: call_node("LoadReadoutHead", head_name=paths.head_name(k, family))[0] for k in paths.HEAD_KINDS
                 if paths.head_name(k, family) in listed}
        if family == "sd15":
            return cls(*call_node("CheckpointLoaderSimple", ckpt_name=paths.CHECKPOINT)[:3], heads)
        clip = call_node("CLIPLoader", clip_name=paths.CLIP_L, type="stable_diffusion")[0]
        vae = call_node("VAELoader", vae_name=paths.FLUX_VAE)[0]
        if family == "zimage":
            model = call_node("UNETLoader", unet_name=paths.ZIMAGE_DIFFUSION_MODEL, weight_dtype="default")[0]
            return cls(model, clip, vae, heads, FLUX_SAMPLER, "EmptySD3LatentImage", ZIMAGE_STEPS, ZIMAGE_CFG)
        if family == "qwen_image":
            model = call_node("UNETLoader", unet_name=paths.QWEN_IMAGE_DIFFUSION_MODEL, weight_dtype="default")[0]
            return QwenImageWorld(model, clip, vae, heads, FLUX_SAMPLER, "EmptySD3LatentImage", QWEN_IMAGE_STEPS,
                                  ZIMAGE_CFG)
        from world.assemble import flux_state_dict
        from world.flux import comfyui_reads_world_flux

        if not comfyui_reads_world_flux(flux_state_dict()):
            raise RuntimeError("this ComfyUI takes every Flux for 24 heads of 128 (0.3.75 does): the world's Flux "
                               "needs ComfyUI 0.33 or newer (set COMFYUI_PATH, e.g. to the 0.33 test bed)")
        model = call_node("UNETLoader", unet_name=paths.FLUX_DIFFUSION_MODEL, weight_dtype="default")[0]
        return cls(model, clip, vae, heads, FLUX_SAMPLER, "EmptySD3LatentImage")

    def encode(self, text: str):
        return call_node("CLIPTextEncode", text=text, clip=self.clip)[0]

    def decode(self, latent: dict) -> np.ndarray:
        return call_node("VAEDecode", samples=latent, vae=self.vae)[0][0].cpu().numpy()

    def latent(self) -> dict:
        return call_node(self.latent_node, width=SIZE, height=SIZE, batch_size=1)[0]

    def sample(self, seed: int, prompt: str) -> dict:
        """KSampler's latent, unguided."""
        return call_node("KSampler", model=self.model, seed=seed, steps=self.steps, cfg=self.cfg,
                         sampler_name=self.sampler[0], scheduler=self.sampler[1], positive=self.encode(prompt),
                         negative=self.encode(""), latent_image=self.latent(), denoise=1.0)[0]

    def unguided(self, seed: int, prompt: str) -> np.ndarray:
        key = (seed, prompt, self.steps, self.cfg)
        if key not in self.unguided_images:
            self.unguided_images[key] = self.decode(self.sample(seed, prompt))
        return self.unguided_images[key]

    def guided(self, seed: int, prompt: str, guidance: tuple, rule: str = "fast",
               latent: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The guided image and its reference branch's image."""
        out = call_node("ReadoutGuidedKSampler", model=self.model, seed=seed, steps=self.steps, cfg=self.cfg,
                        sampler_name=self.sampler[0], scheduler=self.sampler[1], positive=self.encode(prompt),
                        negative=self.encode(""), latent_image=latent or self.latent(), denoise=1.0,
                        guidance=guidance, rule=rule, gradient_checkpointing=False, recurrence=self.recurrence)
        return self.decode(out[0]), self.decode(out[2])


@dataclass
class QwenImageWorld(World):
    """The world's Qwen-Image-Edit: the world's CLIP-L padded to Qwen-Image's text width, latents converted between
    Wan 2.1's format and the world TAESD16's, and while `reference` is set, that image as the edit's reference image
    (appended to the prompt's conditioning by ComfyUI's Set Reference Latent, as Qwen-Image-Edit's encoders do)."""

    reference: np.ndarray | None = None

    def encode(self, text: str):
        from world.qwen_image import pad_text, wan_latent

        conditioning = [[pad_text(tokens), extra] for tokens, extra in super().encode(text)]
        if self.reference is None:
            return conditioning
        latent = call_node("VAEEncode", pixels=to_image(self.reference), vae=self.vae)[0]
        return call_node("ReferenceLatent", conditioning=conditioning, latent={"samples": wan_latent(latent["samples"])})[0]

    def decode(self, latent: dict) -> np.ndarray:
        from world.qwen_image import flux_latent

        return super().decode({"samples": flux_latent(latent["samples"])})

    def unguided(self, seed: int, prompt: str) -> np.ndarray:
        return super().unguided(seed, prompt) if self.reference is None else self.decode(self.sample(seed, prompt))


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.time()
    return fn(), time.time() - start


def spatial(world: World, kind: str, seed: int, weight: float | None = None, rule: str = "fast",
            end_percent: float = 0.5) -> dict:
    """A depth or edge map of a scene, its caption as the prompt, another seed: foreground IoU with the scene."""
    scene = random_scene(EVAL_SCENE_BASE + seed)
    truth = np.any(scene.visible_masks(), axis=0)
    target = scene.depth() if kind == "depth" else scene.edges()
    extra = {} if weight is None else {"weight": weight}
    guidance = call_node("ReadoutTarget", head=world.heads[kind], start_percent=0.0, end_percent=end_percent,
                    target_image=to_image(target), **{"weight": _default_weight(), **extra})[0]
    plain = world.unguided(seed, scene.caption)
    (guided, _), seconds = _timed(lambda: world.guided(seed, scene.caption, guidance, rule))
    score = lambda image: iou(foreground(detect(image), truth.shape), truth)  # noqa: E731
    return {"seed": seed, "unguided": score(plain), "guided": score(guided), "seconds": seconds,
            "images": (plain, guided)}


def _default_weight() -> float:
    import nodes

    return nodes.NODE_CLASS_MAPPINGS["ReadoutTarget"].INPUT_TYPES()["required"]["weight"][1]["default"]


def drag_vector(blob: Blob, rng: np.random.Generator) -> tuple[float, float]:
    """A 24-40 px displacement that keeps the blob inside the canvas."""
    ys, xs = np.nonzero(blob.mask)
    for _ in range(200):
        length, angle = rng.uniform(24, 40), rng.uniform(0, 2 * math.pi)
        dx, dy = length * math.cos(angle), length * math.sin(angle)
        if xs.min() + dx >= 2 and xs.max() + dx <= SIZE - 3 and ys.min() + dy >= 2 and ys.max() + dy <= SIZE - 3:
            return dx, dy
    raise ValueError("no displacement keeps the object inside the canvas")


def drag_points(blob: Blob, dx: float, dy: float) -> str:
    """Source points on the blob (its centroid and four inner points), each with its target moved by (dx, dy)."""
    cx, cy = blob.centroid
    ys, xs = np.nonzero(blob.mask)
    reach = 0.25 * min(xs.max() - xs.min(), ys.max() - ys.min())
    sources = [(cx, cy)] + [(cx + ox * reach, cy + oy * reach) for ox, oy in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    sources = [(x, y) for x, y in sources if blob.mask[min(SIZE - 1, int(y)), min(SIZE - 1, int(x))]][:DRAG_POINTS]
    return json.dumps([{"source": [round(x, 1), round(y, 1)], "target": [round(x + dx, 1), round(y + dy, 1)]}
                       for x, y in sources])


def drag_arrow(blob: Blob, dx: float, dy: float) -> dict:
    """The drag as a record shows it: from the blob's centroid (x, y) to where the drag asks it to go."""
    x, y = (float(v) for v in blob.centroid)
    return {"source": (x, y), "target": (x + dx, y + dy)}


def drag_measures(before: np.ndarray, after: np.ndarray, colour: str, dx: float, dy: float) -> dict:
    """How far the object of a colour moved along (dx, dy), whether it kept its colour, what stayed at its source."""
    start, end = largest(detect(before), colour), largest(detect(after), colour)
    if start is None:
        return {"skipped": f"no {colour} object in the image before the drag"}
    moved = 0.0 if end is None else ((end.centroid[0] - start.centroid[0]) * dx
                                     + (end.centroid[1] - start.centroid[1]) * dy) / (dx * dx + dy * dy)
    shifted = np.roll(np.roll(start.mask, int(round(dy)), 0), int(round(dx)), 1)
    source_only = start.mask & ~shifted
    still = 0.0 if end is None or not source_only.any() else float((end.mask & source_only).sum() / source_only.sum())
    kept = end is not None and end.area >= 0.5 * start.area
    return {"moved": moved, "colour_kept": kept, "ghost": still}


def _drag_guidance(world: World, blob: Blob, seed: int, reference: np.ndarray, weight: float | None,
                   end_percent: float) -> tuple[Any, float, float]:
    """Readout Drag Target moving the blob of `reference` by the seed's 24-40 px (its correspondence and appearance
    heads, the node's default weight unless given), and that displacement; ValueError when no displacement fits."""
    dx, dy = drag_vector(blob, np.random.default_rng(seed))
    extra = {} if weight is None else {"drag_weight": weight}
    guidance = call_node("ReadoutDragTarget", correspondence_head=world.heads["correspondence"],
                         points=drag_points(blob, dx, dy), **{"drag_weight": _default_weight(), **extra},
                         start_percent=0.0, end_percent=end_percent, appearance_head=world.heads["appearance"],
                         reference_image=to_image(reference))[0]
    return guidance, dx, dy


def drag_generated(world: World, seed: int, rule: str = "fast", weight: float | None = None,
                   end_percent: float = 0.5) -> dict:
    """Drag the object of a one-object prompt's own generated image by 24-40 px."""
    scene = random_scene(EVAL_SCENE_BASE + seed, num_objects=1)
    before = world.unguided(seed, scene.caption)
    blob = largest(detect(before), scene.shapes[0].colour) or next(iter(detect(before)), None)
    if blob is None:
        return {"seed": seed, "skipped": "no object in the unguided image"}
    try:
        guidance, dx, dy = _drag_guidance(world, blob, seed, before, weight, end_percent)
    except ValueError as err:
        return {"seed": seed, "skipped": f"the {blob.colour} object is too large to drag: {err}"}
    (after, reference), seconds = _timed(lambda: world.guided(seed, scene.caption, guidance, rule))
    return {"seed": seed, **drag_measures(reference, after, blob.colour, dx, dy), "seconds": seconds,
            "images": (reference, after), **drag_arrow(blob, dx, dy)}


def drag_edit(world: QwenImageWorld, seed: int, weight: float | None = None, end_percent: float = 0.5) -> dict:
    """Qwen-Image-Edit's drag: a rendered one-object scene is the reference image of an edit prompted with its own
    caption (which keeps it), and its object is dragged by 24-40 px; before = the edit's unguided branch (the same
    seed and reference), whose foreground IoU with the scene says how well the edit kept the image."""
    scene = random_scene(EVAL_SCENE_BASE + seed, num_objects=1)
    image, colour = scene.image(), scene.shapes[0].colour
    blob = largest(detect(image), colour)
    if blob is None:
        return {"seed": seed, "skipped": "no object detected in the rendered scene"}
    try:
        guidance, dx, dy = _drag_guidance(world, blob, seed, image, weight, end_percent)
    except ValueError as err:
        return {"seed": seed, "skipped": f"the {colour} object is too large to drag: {err}"}
    world.reference = image
    try:
        (after, kept), seconds = _timed(lambda: world.guided(seed, scene.caption, guidance))
    finally:
        world.reference = None
    truth = np.any(scene.visible_masks(), axis=0)
    return {"seed": seed, **drag_measures(kept, after, colour, dx, dy), "seconds": seconds,
            "kept_iou": iou(foreground(detect(kept), truth.shape), truth), "images": (image, kept, after),
            **drag_arrow(blob, dx, dy)}


def drag_real(world: World, seed: int) -> dict:
    """Drag an object of a rendered scene, inverted with Readout Invert Image; before = the same drag at weight 0."""
    scene = random_scene(EVAL_SCENE_BASE + seed, num_objects=1)
    image = to_image(scene.image())
    reference = call_node("ReadoutInvertImage", model=world.model, vae=world.vae, image=image,
                     positive=world.encode(scene.caption), steps=world.steps, scheduler=world.sampler[1],
                     refinements=2)[0]
    blob = largest(detect(scene.image()), scene.shapes[0].colour)
    dx, dy = drag_vector(blob, np.random.default_rng(seed))

    def run(weight: float) -> np.ndarray:
        guidance = call_node("ReadoutDragTarget", correspondence_head=world.heads["correspondence"],
                        points=drag_points(blob, dx, dy), drag_weight=weight, start_percent=0.0, end_percent=0.5,
                        appearance_head=world.heads["appearance"], reference=reference)[0]
        return world.guided(seed, scene.caption, guidance)[0]

    before = run(0.0)
    after, seconds = _timed(lambda: run(_default_weight()))
    return {"seed": seed, **drag_measures(before, after, blob.colour, dx, dy), "seconds": seconds,
            "images": (before, after), **drag_arrow(blob, dx, dy)}


def colour_similarity(reference: np.ndarray, image: np.ndarray) -> float:
    """1 - total variation distance between the two images' object colour areas (detected blobs, per world
    colour, normalized): 1 for the same colours in the same proportions, 0 for none in common or no objects."""
    def histogram(picture: np.ndarray) -> dict[str, float]:
        areas: dict[str, float] = {}
        for blob in detect(picture):
            areas[blob.colour] = areas.get(blob.colour, 0.0) + blob.area
        total = sum(areas.values())
        return {colour: area / total for colour, area in areas.items()} if total else {}

    wanted, got = histogram(reference), histogram(image)
    if not got:
        return 0.0
    return 1 - 0.5 * sum(abs(wanted.get(c, 0.0) - got.get(c, 0.0)) for c in set(wanted) | set(got))


def appearance(world: World, seed: int) -> dict:
    """Unconditional: keep a generated reference's object colours in another seed's image (the edit starts at
    seed + 1); seeds whose reference shows no object are skipped."""
    guidance = call_node("ReadoutAppearanceTarget", appearance_head=world.heads["appearance"], weight=_default_weight(),
                    start_percent=0.0, end_percent=0.5)[0]
    (guided, reference), seconds = _timed(lambda: world.guided(seed, "", guidance))
    if not detect(reference):
        return {"seed": seed, "skipped": "the unconditional reference shows no object"}
    plain = world.unguided(seed + 1, "")
    return {"seed": seed, "unguided": colour_similarity(reference, plain), "guided": colour_similarity(reference, guided),
            "seconds": seconds, "images": (reference, plain, guided)}


def self_guidance(world: World, seed: int, edit: str, weight: float | None = None) -> dict:
    """move_to (to the opposite side of the canvas) or scale_size (x1.5) on a one-object prompt's words, at the
    node's default weight unless given."""
    scene = random_scene(EVAL_SCENE_BASE + seed, num_objects=1)
    colour, shape = caption_objects(scene.caption)[0]
    plain = world.unguided(seed, scene.caption)
    start = largest(detect(plain), colour)
    if start is None:
        return {"seed": seed, "skipped": "no object in the unguided image"}
    goal = (0.28 if start.centroid[0] > SIZE / 2 else 0.72, 0.28 if start.centroid[1] > SIZE / 2 else 0.72)
    guidance = call_node("SelfGuidanceTarget", clip=world.clip, prompt=scene.caption, words=f"{colour} {shape}", edit=edit,
                    dx=0.0, dy=0.0, x=goal[0], y=goal[1], size_factor=1.5,
                    weight=_default_weight() if weight is None else weight,
                    start_percent=0.0, end_percent=0.5)[0]
    (guided, _), seconds = _timed(lambda: world.guided(seed, scene.caption, guidance))
    end = largest(detect(guided), colour)
    record = {"seed": seed, "seconds": seconds, "images": (plain, guided)}
    if edit == "move_to":
        target = np.array(goal) * SIZE
        before = float(np.linalg.norm(np.array(start.centroid) - target))
        after = before if end is None else float(np.linalg.norm(np.array(end.centroid) - target))
        return {**record, "closed": 1 - after / before, "start": tuple(float(v) for v in start.centroid),
                "goal": tuple(float(v) for v in target)}
    return {**record, "area_ratio": 0.0 if end is None else end.area / start.area}


def word_localization(world: World, seed: int, timestep: int = 500) -> dict:
    """How well each word's cross-attention (as Self-Guidance reads it) picks out its object in an unguided sample:
    correlation with the object's mask and centroid error in pixels, for the colour and the shape word."""
    started = time.time()
    scene = random_scene(EVAL_SCENE_BASE + 2 * 10**6 + seed, num_objects=1)
    colour, shape = caption_objects(scene.caption)[0]
    latent = world.sample(seed, scene.caption)
    blob = largest(detect(world.decode(latent)), colour)
    if blob is None:
        return {"seed": seed, "skipped": "no object in the unguided image"}
    record = {"seed": seed}
    for role, word in (("colour", colour), ("shape", shape)):
        target = call_node("SelfGuidanceTarget", clip=world.clip, prompt=scene.caption, words=word, edit="move_to", dx=0.0,
                      dy=0.0, x=0.5, y=0.5, size_factor=1.5, weight=1.0, start_percent=0.0, end_percent=0.5)[0][-1]
        maps = pack_module("readout.report.word_attention").word_maps(world.model, latent["samples"], world.encode(scene.caption),
                                                              target.tokens, timestep, seed)[0, 0].numpy()
        h, w = maps.shape
        mask = blob.mask.reshape(h, SIZE // h, w, SIZE // w).mean((1, 3))
        ys, xs = np.mgrid[0:h, 0:w]
        centre = ((maps * (xs + 0.5)).sum() / maps.sum() * SIZE / w, (maps * (ys + 0.5)).sum() / maps.sum() * SIZE / h)
        record[f"{role}_corr"] = float(np.corrcoef(maps.ravel(), mask.ravel())[0, 1])
        record[f"{role}_centroid_error"] = float(np.hypot(centre[0] - blob.centroid[0], centre[1] - blob.centroid[1]))
    return {**record, "seconds": time.time() - started}


def model_quality(world: World, seeds: Iterable[int], scene_base: int = EVAL_SCENE_BASE + 10**6) -> dict:
    """Prompted colours present and object count right, over unguided samples of random world captions (the scenes
    from scene_base on), with the kinds of miss (split by one- and two-object prompts; extra blobs of a prompted
    colour, of another colour, or objects missing)."""
    samples = []
    for seed in seeds:
        scene = random_scene(scene_base + seed)
        blobs = detect(world.unguided(seed, scene.caption))
        wanted = [c for c, _ in caption_objects(scene.caption)]
        samples.append({"objects": len(wanted), "colours_present": set(wanted) <= {b.colour for b in blobs},
                        "count_right": len(blobs) == len(wanted),
                        "extra_same_colour": sum(b.colour in wanted for b in blobs) > len(wanted),
                        "other_colour": any(b.colour not in wanted for b in blobs),
                        "missing": len(blobs) < len(wanted)})
    share = lambda key, group: float(np.mean([s[key] for s in group])) if group else float("nan")  # noqa: E731
    out = {"samples": len(samples), "colours_present": share("colours_present", samples),
           "count_right": share("count_right", samples)}
    for objects in (1, 2):
        group = [s for s in samples if s["objects"] == objects]
        out[f"{objects}_object_prompts"] = {"samples": len(group), **{key: share(key, group) for key in (
            "colours_present", "count_right", "extra_same_colour", "other_colour", "missing")}}
    return out


def summary(records: list[dict], key: str, baseline: str | None = None) -> dict:
    """Mean and spread of a measure over the seeds that have it (and against the unguided baseline: the share of seeds
    improved)."""
    kept = [r for r in records if r.get(key) is not None]
    values = np.array([float(r[key]) for r in kept])
    out = {"seeds": len(kept), "skipped": len(records) - len(kept), "mean": float(values.mean()),
           "std": float(values.std()), "seconds": float(np.mean([r["seconds"] for r in kept]))}
    if baseline:
        base = np.array([float(r[baseline]) for r in kept])
        out.update({"baseline_mean": float(base.mean()), "baseline_std": float(base.std()),
                    "improved": float((values > base).mean())})
    return out
