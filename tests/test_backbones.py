"""The backbone seam: every model-specific fact lives in readout/backbones/, read from ComfyUI's own model."""
from __future__ import annotations

import os
import re

import pytest
import torch

from helpers import call_node, every_family, pack_module
from testbed import REPO
from tiny.models import readout_dims

MODEL_INTERNALS = re.compile(r"\b(output_blocks|input_blocks|time_embed|out_layers)\b")


def test_no_model_internals_outside_the_backbones():
    found = []
    for folder in ("readout", "nodes"):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            if os.path.relpath(root, REPO).startswith(os.path.join("readout", "backbones")):
                continue
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as f:
                        found += [f"{os.path.relpath(path, REPO)}: {m.group(0)}" for m in MODEL_INTERNALS.finditer(f.read())]
    assert found == []


FAMILY_CLASSES = {"sd15": ("SD15", "SD1.5"), "sdxl": ("Segmind_Vega", "SDXL")}
"""ComfyUI's detected model config class of each family's tiny checkpoint, and the backbone's label."""


@pytest.mark.every_comfyui
@pytest.mark.each_family_on_every_comfyui
@every_family
def test_each_tiny_checkpoint_is_its_family_with_its_decoder_dims(tiny, family):
    backbone = pack_module("readout.backbones.registry").backbone_for(tiny[0])
    unet = tiny[0].model.diffusion_model
    config_class, label = FAMILY_CLASSES[family]
    assert type(tiny[0].model.model_config).__name__ == config_class
    assert (backbone.family, backbone.label) == (family, label)
    assert backbone.feature_dims(unet) == readout_dims(family)
    assert backbone.feature_dims(unet) == [block[0].out_channels for block in unet.output_blocks]
    assert len(backbone.cross_attentions(unet)) > 0 and len(backbone.checkpoint_layers(unet)) > len(unet.output_blocks)


@pytest.mark.every_comfyui
@every_family
def test_noising_follows_the_model_sampling(tiny):
    backbone = pack_module("readout.backbones.registry").backbone_for(tiny[0])
    latent, noise = torch.rand(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([100.0, 700.0])
    x, sigma = backbone.noised(tiny[0], latent, timesteps, noise)
    base = tiny[0].model
    expected_sigma = base.model_sampling.sigma(timesteps)
    torch.testing.assert_close(sigma, expected_sigma)
    torch.testing.assert_close(x, base.process_latent_in(latent) + noise * expected_sigma[:, None, None, None])
    assert sigma[1] > sigma[0]


WORD_MAP_SIZES = {"sd15": (8, 8), "sdxl": (4, 4)}
"""A word's map comes on the finest cross-attention grid: the SDXL family has none at the latent's own size."""


@pytest.mark.every_comfyui
@every_family
def test_hooked_evaluation_captures_what_the_decoder_computed(tiny, family):
    model, clip, _ = tiny
    evaluation = pack_module("readout.backbones.evaluation")
    latent = torch.rand(1, 4, 8, 8)
    positive = call_node("CLIPTextEncode", text="a photo", clip=clip)[0]
    with torch.inference_mode():
        reading = evaluation.hooked_evaluation(model, latent, torch.tensor([300.0]), torch.randn(1, 4, 8, 8),
                                               positive, tokens=(1, 2))
        again = evaluation.hooked_evaluation(model, latent, torch.tensor([300.0]), torch.randn(1, 4, 8, 8),
                                             positive, features=False)
    dims = pack_module("readout.backbones.registry").backbone_for(model).feature_dims(model.model.diffusion_model)
    assert [f.shape[1] for f in reading.features] == dims and all(f.shape[0] == 1 for f in reading.features)
    maps = reading.attention.word_maps((1, 2), 8, 8)
    assert maps.shape == (1, 1, *WORD_MAP_SIZES[family]) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert again.features is None and again.attention is None
    assert reading.timesteps.tolist() == [300.0]


def _pack_imports(path: str, module: str) -> set[str]:
    """Modules of readout/ that a module imports (relative imports anywhere in it, lazy ones included)."""
    import ast

    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    package = module.rsplit(".", 1)[0] if not path.endswith("__init__.py") else module
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
    return found


def test_readout_has_no_import_cycle():
    modules = {}
    for root, _, files in os.walk(os.path.join(REPO, "readout")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                modules[module] = path
    graph = {m: {t for t in _pack_imports(p, m) if t in modules} for m, p in modules.items()}
    assert graph["readout.guidance.patch"] >= {"readout.guidance.rules.fast", "readout.guidance.rules.official"}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", f"import cycle: {' -> '.join(trail + [module, target])}"
            if target not in state:
                visit(target, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
