"""Nodes that load readout heads and show what they read in an image."""
from __future__ import annotations

import os

import folder_paths

from ..readout.heads.extract import extract_readout
from ..readout.heads.head_model import load_head_model
from ..readout.heads.architecture import HEAD_KINDS
from ..readout.heads.model_folder import FOLDER_NAME, head_file_names
from ..readout.heads.readouts import render_readout
from ..readout.backbones.evaluation import encode_empty_prompt
from ..readout.backbones.registry import backbone_for
from .common import CATEGORY, require_vae_size

AUTO = "auto"
EMBEDDING_CHOICES = {"E(t) (official guidance)": False, "E(1000-t) (official training)": True}


class LoadReadoutHead:
    """Load a readout head (official .pt or our .safetensors) from models/readout_heads."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "head_name": (head_file_names(), {
                    "tooltip": "A head file in ComfyUI/models/readout_heads: an official "
                               "readout_{sdv15,sdxl}_*.pt or a .safetensors head from our trainer."}),
            },
            "optional": {
                "kind": ([AUTO, *HEAD_KINDS], {
                    "default": AUTO,
                    "tooltip": "What the head reads. 'auto' takes it from the file (config, or the official "
                               "file name); set it for an official relative head that was renamed."}),
                "timestep_embedding": (list(EMBEDDING_CHOICES), {
                    "default": next(iter(EMBEDDING_CHOICES)),
                    "tooltip": "Timestep fed to the head. The official guidance feeds E(t) (use this for official "
                               "heads); their training fed E(1000-t). Heads from our trainer record their own."}),
            },
        }

    RETURN_TYPES = ("READOUT_HEAD", "STRING")
    RETURN_NAMES = ("head", "info")
    OUTPUT_TOOLTIPS = ("The loaded head, for ReadoutTarget and ExtractReadout.", "Kind, model family and layers.")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a readout head; it moves to the GPU with the UNet and is offloaded with it."

    @classmethod
    def IS_CHANGED(cls, head_name: str, **_options) -> str:
        """ComfyUI's change fingerprint: the file's size and modification time, so a head retrained into the same
        file name is loaded again (the options are part of the cache key already)."""
        path = folder_paths.get_full_path(FOLDER_NAME, head_name)
        if path is None or not os.path.isfile(path):
            return head_name
        stat = os.stat(path)
        return f"{head_name}:{stat.st_size}:{stat.st_mtime_ns}"

    def load(self, head_name: str, kind: str = AUTO, timestep_embedding: str = next(iter(EMBEDDING_CHOICES))):
        path = folder_paths.get_full_path(FOLDER_NAME, head_name)
        if path is None:
            raise ValueError(f"head_name: {head_name!r} is not in models/{FOLDER_NAME}; put the file there and refresh")
        reverse = EMBEDDING_CHOICES.get(timestep_embedding)
        head = load_head_model(path, None if kind == AUTO else kind, reverse if reverse else None)
        info = head.describe()
        return {"ui": {"text": [info]}, "result": (head, info)}


class ExtractReadout:
    """Show what a readout head sees in an image, and keep it as a READOUT usable as a target."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD1.5/SDXL model the head was trained on."}),
                "vae": ("VAE", {"tooltip": "The VAE that encodes the image into the model's latent space."}),
                "head": ("READOUT_HEAD", {"tooltip": "From LoadReadoutHead."}),
                "timestep": ("INT", {
                    "default": -1, "min": -1, "max": 999,
                    "tooltip": "Noise level as a diffusion timestep (0 = clean, 999 = pure noise); "
                               "-1 uses the head's own (save_timestep of its config)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Seed of the noise added at that timestep."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The image(s) to read, encoded with the VAE. Connect this or latent."}),
                "latent": ("LATENT", {
                    "tooltip": "A latent to read as it is, e.g. a sampler's output: no VAE round trip, so the "
                               "readout is exactly the sampled latent's. Connect this or image."}),
                "positive": ("CONDITIONING", {
                    "tooltip": "Prompt for the UNet pass. Leave empty to use the empty prompt (as the heads "
                               "were trained); then connect clip."}),
                "clip": ("CLIP", {"tooltip": "Encodes the empty prompt when positive is not connected."}),
                "colors_from": ("READOUT", {
                    "tooltip": "Relative heads: colour with this readout's principal components (same head), so "
                               "two images' readouts show the same feature in the same colour."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "READOUT")
    RETURN_NAMES = ("readout_image", "readout")
    OUTPUT_TOOLTIPS = (
        "Spatial heads: the map as a control image. Relative heads: 3 principal components as colours.",
        "The raw readout and its metadata, usable as a target.",
    )
    FUNCTION = "extract"
    CATEGORY = CATEGORY
    DESCRIPTION = "Runs the UNet once on the noised image (or latent) and reads its decoder features with the head."

    def extract(self, model, vae, head, timestep: int, seed: int, image=None, latent=None, positive=None, clip=None,
                colors_from=None):
        if (image is None) == (latent is None):
            raise ValueError("image / latent: connect exactly one of them (an IMAGE to encode with the VAE, or a "
                             "sampler's LATENT to read as it is)")
        if image is not None:
            require_vae_size(image, "image", "Extract Readout")
        if latent is not None:
            backbone_for(model).check_latent(latent["samples"], "latent")
        if positive is None:
            if clip is None:
                raise ValueError("positive / clip: connect a positive conditioning, or a CLIP to encode the empty prompt")
            positive = encode_empty_prompt(clip)
        if timestep < 0:
            timestep = head.config.save_timestep[0]
        if colors_from is not None and colors_from.head_name != head.name:
            raise ValueError(f"colors_from: it was read with {colors_from.head_name!r}, not {head.name!r}; connect a "
                             "readout of the same head")
        readout = extract_readout(model, vae, head, image, positive, timestep, seed,
                                  None if latent is None else latent["samples"])
        return (render_readout(readout, colors_from), readout)


NODE_CLASS_MAPPINGS = {"LoadReadoutHead": LoadReadoutHead, "ExtractReadout": ExtractReadout}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadReadoutHead": "Load Readout Head", "ExtractReadout": "Extract Readout"}
