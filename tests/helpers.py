"""Helpers that drive the real ComfyUI: node calls as the executor makes them, prompts, a live server."""
from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from testbed import REPO, comfyui_path
from testbed.server import ComfyServer, start_server, stop_server
from testbed.nodes import call_node, node_class, node_output, pack_module  # noqa: F401  (the tests import them from here)

from tiny.models import (TINY_CHECKPOINT as TINY_CKPT, TINY_CHECKPOINTS, TINY_CONTROLNET, TINY_FAMILIES,  # noqa: F401
                         TINY_LORA, TINY_MIDDLE_UNET, TINY_T2I_ADAPTER, tiny_head_name)

STEPS = 8
ONE_PASS = {"recurrence": 1}
"""Guided samplers' option for the tests that are not about recurrence: one guided pass per step, as their thresholds
were measured (auto takes two in runs of 8 steps or fewer; tests/test_recurrence.py tests it)."""
PREVIOUS_RELEASE = os.path.join(REPO, "tests", "previous_release")
"""The previous release's node schemas (object_info.json) and workflows/, kept to prove they load and run."""
PREVIOUS_WORKFLOWS = sorted(f for f in os.listdir(os.path.join(PREVIOUS_RELEASE, "workflows")) if f.endswith(".json"))


def previous_node_types(name: str) -> set[str]:
    with open(os.path.join(PREVIOUS_RELEASE, "workflows", name), encoding="utf-8") as f:
        return {node["type"] for node in json.load(f)["nodes"]}


def covering_workflows(names: list[str]) -> list[str]:
    """A few of these workflows that hold every node type of all of them (greedy: most new types first)."""
    types = {name: previous_node_types(name) for name in names}
    left, chosen = set().union(*types.values()), []
    while left:
        best = max(names, key=lambda name: len(types[name] & left))
        chosen.append(best)
        left -= types[best]
    return chosen


PREVIOUS_WORKFLOWS_EVERY_NODE = covering_workflows(PREVIOUS_WORKFLOWS)
"""What older frontends load: a node type loads the same in every workflow, so these hold each type once at least."""


def previous_schema() -> dict:
    """Our nodes' /object_info in the previous release (classic nodes), with lists that depend on the install
    (samplers, schedulers, head files) marked {"options_from": ...}."""
    with open(os.path.join(PREVIOUS_RELEASE, "object_info.json"), encoding="utf-8") as f:
        return json.load(f)


every_family = pytest.mark.parametrize(
    "family", [pytest.param(family, marks=pytest.mark.sdxl_family) if family == "sdxl" else family
               for family in TINY_FAMILIES], indirect=True)
"""Run a test on each family's tiny model (SD1.5 and the SDXL family); its beds take the `family` fixture. The SDXL
runs are marked `sdxl_family`: ComfyUI 0.3.75 runs an `every_comfyui` test on SD1.5 only, unless it is also marked
`each_family_on_every_comfyui` (model detection)."""


def schema_inputs(name: str, optional: bool | None = None) -> dict[str, Any]:
    """A V3 node's schema inputs by id (only the required ones with optional=False, the optional ones with True)."""
    inputs = node_class(name).GET_SCHEMA().inputs
    return {i.id: i for i in inputs if optional is None or bool(i.optional) == optional}


MODEL_FOLDERS = ("readout_heads", "readout_datasets")


@contextmanager
def own_model_folders(root: str | os.PathLike[str], only: bool = False) -> Iterator[Path]:
    """ComfyUI's models/readout_heads and models/readout_datasets with fresh folders under `root` listed first (the
    tiny heads stay listed, unless `only`); ComfyUI's folder lists are restored afterwards. Yields `root`."""
    import folder_paths

    with pytest.MonkeyPatch.context() as patch:
        for name in MODEL_FOLDERS:
            folder = os.path.join(root, name)
            os.makedirs(folder, exist_ok=True)
            paths, extensions = folder_paths.folder_names_and_paths[name]
            patch.setitem(folder_paths.folder_names_and_paths, name, ([folder] if only else [folder, *paths], extensions))
        yield Path(root)


def sample_image(height: int = 64, width: int = 64) -> torch.Tensor:
    """A smooth colour ramp as a ComfyUI IMAGE batch of one."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([x, y, (x * y) ** 0.5], dim=-1)[None]


def with_tiny_controlnet(positive, negative, vae, name: str = TINY_CONTROLNET) -> tuple:
    """Both prompts through a tiny ControlNet or T2I adapter (a bright box as the hint), as ControlNetApplyAdvanced
    makes them."""
    controlnet = call_node("ControlNetLoader", control_net_name=name)[0]
    hint = torch.zeros(1, 64, 64, 3)
    hint[:, 8:40, 20:50] = 1.0
    return call_node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=controlnet,
                     image=hint, strength=1.0, start_percent=0.0, end_percent=1.0, vae=vae)


class _ServerStub:
    """The part of PromptServer the executor talks to."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event: str, data: dict, sid: str | None = None) -> None:
        self.messages.append((event, data))


@dataclass
class PromptResult:
    success: bool
    outputs: dict
    messages: list = field(default_factory=list)

    def error_text(self) -> str:
        return "\n".join(json.dumps(d, default=str)[:2000] for e, d in self.messages if e == "execution_error")

    def error(self) -> dict:
        """The execution_error message: node_type, exception_type, exception_message, traceback."""
        errors = [d for e, d in self.messages if e == "execution_error"]
        assert errors, f"the prompt did not fail (success {self.success})"
        return errors[0]


def prompt_executor():
    """An in-process execution.PromptExecutor with ComfyUI's classic cache, as the server keeps one between prompts."""
    import execution

    # "ram_inactive" is read by ComfyUI 0.33's executor; 0.3.75 ignores it
    cache_args = {"lru": 0, "ram": 0, "ram_inactive": 0}
    return execution.PromptExecutor(_ServerStub(), cache_type=execution.CacheType.CLASSIC, cache_args=cache_args)


def run_prompt(prompt: dict, executor=None) -> PromptResult:
    """Validate and execute an API-format prompt in process (on `executor` to keep its cache, else a fresh one)."""
    import execution

    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        raise AssertionError(f"prompt failed validation: {valid[1]} {valid[3]}")
    executor = executor or prompt_executor()
    executor.execute(prompt, prompt_id, {}, valid[2])
    return PromptResult(executor.success, executor.history_result["outputs"], executor.status_messages)


@pytest.fixture(scope="session")
def comfy_server() -> Iterator[ComfyServer]:
    """The real ComfyUI server with this pack, for the whole test session.

    Its user folder is fresh: the editor's settings are the defaults, except that the first-run templates
    dialog has been seen (it would cover the canvas). Its temp folder is its own: a server that starts on the same
    ComfyUI (CI runs two test processes at once) wipes ComfyUI's temp folder, and with it this one's previews.
    """
    out = tempfile.mkdtemp(prefix="rg-server-out-")
    user_dir = tempfile.mkdtemp(prefix="rg-server-user-")
    os.makedirs(os.path.join(user_dir, "default"))
    with open(os.path.join(user_dir, "default", "comfy.settings.json"), "w", encoding="utf-8") as f:
        json.dump({"Comfy.TutorialCompleted": True}, f)
    server = start_server(comfyui_path(), out, os.path.join(out, "server.log"), user_dir=user_dir,
                          temp_dir=tempfile.mkdtemp(prefix="rg-server-temp-"))
    RUNNING_SERVERS.append(server)
    try:
        yield server
    finally:
        RUNNING_SERVERS.remove(server)
        stop_server(server)


RUNNING_SERVERS: list[ComfyServer] = []
"""The session's server once a test has started it (release_models frees its models after each module)."""


def release_models() -> None:
    """Unload and collect the models ComfyUI holds, in this process (its freed heap handed back to the system) and in
    the running server (which frees them between prompts): a module's tiny SDXL or world model is not kept through
    the rest of the session, and two test processes side by side (CI) stay within the machine's memory."""
    import ctypes
    import gc

    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
    for server in RUNNING_SERVERS:
        server.post("/free", {"unload_models": True, "free_memory": True})


def text_to_image_prompt(seed: int = 1, steps: int = 4, size: int = 64, prefix: str = "rg_test") -> dict:
    """A plain text-to-image API prompt on the tiny checkpoint."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


class TinyBed:
    """The user's graph so far on a family's tiny checkpoint (Load Checkpoint): MODEL, CLIP, VAE, the prompt and the
    empty prompt encoded, an empty 64 px latent; heads from Load Readout Head."""

    def __init__(self, prompt: str, family: str = "sd15") -> None:
        self.family = family
        self.model, self.clip, self.vae = call_node("CheckpointLoaderSimple", ckpt_name=TINY_CHECKPOINTS[family])[:3]
        self.pos = call_node("CLIPTextEncode", text=prompt, clip=self.clip)[0]
        self.neg = call_node("CLIPTextEncode", text="", clip=self.clip)[0]
        self.latent = call_node("EmptyLatentImage", width=64, height=64, batch_size=1)[0]

    def load_head(self, kind: str):
        """The tiny head of a kind for this bed's family, from Load Readout Head."""
        return call_node("LoadReadoutHead", head_name=tiny_head_name(kind, family=self.family))[0]

    def readout(self, samples: torch.Tensor, head) -> torch.Tensor:
        """A head's readout of a final latent, as ExtractReadout reads images (t = 0, empty prompt)."""
        with torch.inference_mode():
            return pack_module("readout.heads.extract").latent_readout(self.model, head, samples, self.neg, 0, 0)


class SpatialBed(TinyBed):
    """The user's graph so far: checkpoint, prompts, an empty latent, a pose head and a reachable target."""

    def __init__(self, steps: int = STEPS, family: str = "sd15") -> None:
        super().__init__("a dancer on a beach", family)
        self.steps = steps
        self.head = self.load_head("pose")
        reference = self.ksampler(self.model, seed=7)
        self.target_map = self.readout(reference)

    def ksampler(self, model, seed: int = 1, sampler: str = "euler", cfg: float = 5.0, latent=None, positive=None,
                 negative=None) -> torch.Tensor:
        return call_node("KSampler", model=model, seed=seed, steps=self.steps, cfg=cfg, sampler_name=sampler,
                         scheduler="normal", positive=positive or self.pos, negative=negative or self.neg,
                         latent_image=latent or self.latent, denoise=1.0)[0]["samples"]

    def guided(self, guidance, seed: int = 1, sampler: str = "euler", cfg: float = 5.0, model=None, latent=None,
               positive=None, negative=None, **options):
        out, plot, _ = self.guided_run(guidance, seed, sampler, cfg, model, latent, positive, negative,
                                       **options)["result"]
        return out["samples"], plot

    def guided_run(self, guidance, seed: int = 1, sampler: str = "euler", cfg: float = 5.0, model=None, latent=None,
                   positive=None, negative=None, **options) -> dict:
        """ReadoutGuidedKSampler's whole return: its outputs under "result", its report under "ui"."""
        return node_output("ReadoutGuidedKSampler", model=model or self.model, seed=seed, steps=self.steps,
                           cfg=cfg, sampler_name=sampler, scheduler="normal", positive=positive or self.pos,
                           negative=negative or self.neg, latent_image=latent or self.latent, denoise=1.0,
                           guidance=guidance, **{**ONE_PASS, **options})

    def readout(self, samples: torch.Tensor, head=None) -> torch.Tensor:
        """The pose head's (or another head's) readout of a final latent."""
        return super().readout(samples, head or self.head)

    def unit_map(self, readout: torch.Tensor) -> torch.Tensor:
        """A readout as a [0, 1] IMAGE (B, H, W, 3), what ReadoutTarget takes as target_image."""
        return pack_module("readout.heads.readouts").spatial_to_unit(readout, self.head.config.control_range).movedim(1, -1)

    def target(self, weight: float = 1.0, end: float = 1.0, image=None, head=None, **extra):
        image = self.unit_map(self.target_map) if image is None else image
        return call_node("ReadoutTarget", head=head or self.head, weight=weight, start_percent=0.0, end_percent=end,
                         target_image=image, **extra)[0]

    def loss(self, guidance, samples: torch.Tensor) -> float:
        return float(guidance[0].loss(self.readout(samples)).sum())


def assert_lowered(bed: SpatialBed, guidance, samples: torch.Tensor, plain: torch.Tensor) -> None:
    assert torch.isfinite(samples).all()
    assert bed.loss(guidance, samples) < 0.9 * bed.loss(guidance, plain)


def assert_model_is_the_family_with_its_widths(model, family: str) -> None:
    """The loaded tiny model's backbone is the family, with the tiny model's readout and embedding widths, and its
    timestep embedding tells two timesteps apart."""
    from tiny.models import embedding_width, readout_dims

    backbone = pack_module("readout.backbones.registry").backbone_for(model)
    diffusion_model = model.model.diffusion_model
    assert backbone.family == family
    assert backbone.feature_dims(diffusion_model) == readout_dims(family)
    assert backbone.embedding_dim(diffusion_model) == embedding_width(family)
    with torch.inference_mode():
        emb = backbone.timestep_embedding(diffusion_model, torch.tensor([0.0, 500.0]))
    assert emb.shape == (2, embedding_width(family)) and not torch.allclose(emb[0], emb[1])


def assert_features_are_image_tokens_on_the_grid(model, conditioning, channels: int, patch: int, width: int) -> None:
    """A change in one corner of a (1, channels, 4 * patch, 6 * patch) latent changes the readout features most at
    that corner's patch, in every readout block: the image tokens laid out row by row on the 4x6 patch grid."""
    evaluation = pack_module("readout.backbones.evaluation")
    latent = torch.randn(1, channels, 4 * patch, 6 * patch, generator=torch.Generator().manual_seed(0))
    poked = latent.clone()
    poked[:, :, -patch:, -patch:] += 3.0
    noise = torch.zeros_like(latent)

    def features(x):
        return evaluation.hooked_evaluation(model, x, torch.tensor([0.0]), noise, conditioning).features

    for before, after in zip(features(latent), features(poked)):
        assert before.shape == (1, width, 4, 6)
        change = (after - before).norm(dim=1)[0]
        assert int(change.argmax()) == 4 * 6 - 1, change


def assert_self_guidance_moves_the_word(model, clip, positive, sample, size: int, patch_pixels: int = 16) -> None:
    """move_to brings the word's image-query x text-key attention centroid toward the goal: `sample(guidance=None)`
    samples a seed of `model` with `positive` (encoded by `clip`), guided when given a target; the maps are read on a
    (size / patch_pixels) grid."""
    evaluation = pack_module("readout.backbones.evaluation")
    self_guidance = pack_module("readout.targets.self_guidance")
    prompt, words = "a red cube on a table", "cube"
    tokens = pack_module("readout.targets.prompt_tokens").word_token_positions(clip, prompt, words)
    target = call_node("SelfGuidanceTarget", clip=clip, prompt=prompt, words=words, edit="move_to", dx=0.0, dy=0.0,
                       x=0.2, y=0.8, size_factor=1.0, weight=4.0, start_percent=0.0, end_percent=1.0)[0]

    def centroid(samples):
        with torch.inference_mode():
            reading = evaluation.hooked_evaluation(model, samples, torch.zeros(1),
                                                   evaluation.seeded_noise(samples, 0), positive, tokens=tokens)
            maps = reading.attention.word_maps(tokens, *samples.shape[-2:]).float()
        assert maps.shape == (1, 1, size // patch_pixels, size // patch_pixels)
        return self_guidance.centroid(maps)[0]

    goal = torch.tensor([0.2, 0.8])
    start, moved = centroid(sample()), centroid(sample(guidance=target))
    print(f"centroid unguided {start.tolist()}, guided {moved.tolist()}, goal {goal.tolist()}")
    assert (moved - goal).abs().sum() < 0.9 * (start - goal).abs().sum(), (start, moved)


def assert_drag_lowers_the_drag_loss(bed, size: int, seed: int = 3) -> None:
    """A drag of a DiT bed's generated image (`bed`: head(kind), sample(seed=, guidance=), readout(samples, head))
    ends with a lower drag loss than the same seed's run at drag weight 0, both read against the run's reference."""
    corr = bed.head("correspondence")
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([x, y, 1 - x * y], dim=-1)[None]
    points = json.dumps([{"source": [16, 16], "target": [44, 40]}])

    def drag(weight: float):
        return call_node("ReadoutDragTarget", correspondence_head=corr, points=points, drag_weight=weight,
                         start_percent=0.0, end_percent=1.0, reference_image=image)[0]

    guidance = drag(1.0)
    edited, _, reference = bed.sample(seed=seed, guidance=guidance)
    unguided = bed.sample(seed=seed, guidance=drag(0.0))[0]

    def drag_loss(samples):
        return float(guidance[0].loss(bed.readout(samples["samples"], corr),
                                      bed.readout(reference["samples"], corr)).sum())
    assert drag_loss(edited) < drag_loss(unguided)


def assert_plot_shows_losses(plot: torch.Tensor, labels: list[str]) -> None:
    """The loss plot draws a curve per target: more pixels of the first target's colour than the plot of the same
    targets with no guided steps (whose frame, axis text and labels are drawn too)."""
    loss_plot = pack_module("readout.guidance.loss_plot")
    colour = torch.tensor(loss_plot.COLORS[0], dtype=torch.float32) / 255

    def coloured(image: torch.Tensor) -> int:
        return int(((image[0] - colour).abs().amax(dim=-1) < 0.05).sum())

    assert plot.shape == (1, loss_plot.HEIGHT, loss_plot.WIDTH, 3)
    assert coloured(plot) > coloured(loss_plot.plot_losses([[] for _ in labels], labels)) + 200


def model_state(model) -> dict:
    """What a guided run could leave behind on a user's MODEL: module hooks, instance forwards, weight/bias functions,
    parameters (an autograd-safe alias is not an inference tensor) and the patcher's post-CFG functions, wrappers and
    transformer and object patches. Parameter objects themselves may change: ComfyUI re-patches LoRA weights into new ones."""
    modules = {}
    for name, module in model.model.diffusion_model.named_modules():
        modules[name] = (
            len(module._forward_hooks), len(module._forward_pre_hooks), "forward" in module.__dict__,
            tuple(module.__dict__.get("weight_function", ())), tuple(module.__dict__.get("bias_function", ())),
            tuple((p.is_inference(), p.dtype, float(p.detach().float().sum()))
                  for p in module.parameters(recurse=False)),
        )
    transformer_options = model.model_options.get("transformer_options", {})
    patches = {kind: {key: list(value) if isinstance(value, list) else dict(value) for key, value in
                      transformer_options.get(kind, {}).items()} for kind in ("patches", "patches_replace")}
    return {"modules": modules, "post_cfg": list(model.model_options.get("sampler_post_cfg_function", [])),
            "wrappers": {k: dict(v) for k, v in model.wrappers.items() if v}, "patches": patches,
            "object_patches": dict(model.object_patches)}


def assert_model_untouched(model, before: dict) -> None:
    """The MODEL is as `model_state` saw it before the run."""
    after = model_state(model)
    changed = [name for name in before["modules"] if before["modules"][name] != after["modules"].get(name)]
    assert not changed, (f"left on the shared model: {changed[:5]}; first: {before['modules'][changed[0]]} -> "
                         f"{after['modules'].get(changed[0])}" if changed else "")
    for key in ("post_cfg", "wrappers", "patches", "object_patches"):
        assert after[key] == before[key], f"the model's {key} changed"


def word_reading(model, clip, prompt: str, positive, samples: torch.Tensor,
                 words: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A prompt word's cross-attention map and the decoder features on a final latent (t = 0, the prompt)."""
    evaluation = pack_module("readout.backbones.evaluation")
    tokens = pack_module("readout.targets.prompt_tokens").word_token_positions(clip, prompt, words)
    with torch.inference_mode():
        reading = evaluation.hooked_evaluation(model, samples, torch.zeros(1), evaluation.seeded_noise(samples, 0),
                                               positive, tokens=tokens)
        return reading.attention.word_maps(tokens, *samples.shape[-2:]).float(), reading.features
