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
from .common import CATEGORY, ReadoutType, ReadoutHeadType, io, require_vae_size, seed_input

AUTO = "auto"
EMBEDDING_CHOICES = {"E(t) (official guidance)": False, "E(1000-t) (official training)": True}


class LoadReadoutHead(io.ComfyNode):
    """Load a readout head (official .pt or our .safetensors) from models/readout_heads."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadReadoutHead", display_name="Load Readout Head", category=CATEGORY,
            description="Loads a readout head; it moves to the GPU with the UNet and is offloaded with it.",
            inputs=[
                io.Combo.Input("head_name", options=head_file_names(), tooltip=(
                    "A head file in ComfyUI/models/readout_heads: an official "
                    "readout_{sdv15,sdxl}_*.pt or a .safetensors head from our trainer.")),
                io.Combo.Input("kind", options=[AUTO, *HEAD_KINDS], default=AUTO, optional=True, tooltip=(
                    "What the head reads. 'auto' takes it from the file (config, or the official "
                    "file name); set it for an official relative head that was renamed.")),
                io.Combo.Input("timestep_embedding", options=list(EMBEDDING_CHOICES),
                               default=next(iter(EMBEDDING_CHOICES)), optional=True, tooltip=(
                    "Timestep fed to the head. The official guidance feeds E(t) (use this for official "
                    "heads); their training fed E(1000-t). Heads from our trainer record their own.")),
            ],
            outputs=[
                ReadoutHeadType.Output(display_name="head",
                                   tooltip="The loaded head, for ReadoutTarget and ExtractReadout."),
                io.String.Output(display_name="info", tooltip="Kind, model family and layers."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, head_name: str, **_options) -> str:
        """The file's size and modification time, so a head retrained into the same file name is loaded again
        (the options are part of the cache key already)."""
        path = folder_paths.get_full_path(FOLDER_NAME, head_name)
        if path is None or not os.path.isfile(path):
            return head_name
        stat = os.stat(path)
        return f"{head_name}:{stat.st_size}:{stat.st_mtime_ns}"

    @classmethod
    def execute(cls, head_name: str, kind: str = AUTO,
                timestep_embedding: str = next(iter(EMBEDDING_CHOICES))) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER_NAME, head_name)
        if path is None:
            raise ValueError(f"head_name: {head_name!r} is not in models/{FOLDER_NAME}; put the file there and refresh")
        reverse = EMBEDDING_CHOICES.get(timestep_embedding)
        head = load_head_model(path, None if kind == AUTO else kind, reverse if reverse else None)
        info = head.describe()
        return io.NodeOutput(head, info, ui={"text": [info]})


class ExtractReadout(io.ComfyNode):
    """Show what a readout head sees in an image, and keep it as a READOUT usable as a target."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExtractReadout", display_name="Extract Readout", category=CATEGORY,
            description="Runs the UNet once on the noised image (or latent) and reads its decoder features with "
                        "the head.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5/SDXL model the head was trained on."),
                io.Vae.Input("vae", tooltip="The VAE that encodes the image into the model's latent space."),
                ReadoutHeadType.Input("head", tooltip="From LoadReadoutHead."),
                io.Int.Input("timestep", default=-1, min=-1, max=999, tooltip=(
                    "Noise level as a diffusion timestep (0 = clean, 999 = pure noise); "
                    "-1 uses the head's own (save_timestep of its config).")),
                seed_input(),
                io.Image.Input("image", optional=True,
                               tooltip="The image(s) to read, encoded with the VAE. Connect this or latent."),
                io.Latent.Input("latent", optional=True, tooltip=(
                    "A latent to read as it is, e.g. a sampler's output: no VAE round trip, so the "
                    "readout is exactly the sampled latent's. Connect this or image.")),
                io.Conditioning.Input("positive", optional=True, tooltip=(
                    "Prompt for the UNet pass. Leave empty to use the empty prompt (as the heads "
                    "were trained); then connect clip.")),
                io.Clip.Input("clip", optional=True,
                              tooltip="Encodes the empty prompt when positive is not connected."),
                ReadoutType.Input("colors_from", optional=True, tooltip=(
                    "Relative heads: colour with this readout's principal components (same head), so "
                    "two images' readouts show the same feature in the same colour.")),
            ],
            outputs=[
                io.Image.Output(display_name="readout_image", tooltip=(
                    "Spatial heads: the map as a control image. Relative heads: 3 principal components as colours.")),
                ReadoutType.Output(display_name="readout",
                                   tooltip="The raw readout and its metadata, usable as a target."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, head, timestep: int, seed: int, image=None, latent=None, positive=None, clip=None,
                colors_from=None) -> io.NodeOutput:
        if (image is None) == (latent is None):
            raise ValueError("image / latent: connect exactly one of them (an IMAGE to encode with the VAE, or a "
                             "sampler's LATENT to read as it is)")
        if image is not None:
            require_vae_size(image, "image", "Extract Readout")
        if latent is not None:
            backbone_for(model).check_latent(latent["samples"], "latent")
        if positive is None:
            if clip is None:
                raise ValueError("positive / clip: connect a positive conditioning, or a CLIP to encode the empty "
                                 "prompt")
            positive = encode_empty_prompt(clip)
        if timestep < 0:
            timestep = head.config.save_timestep[0]
        if colors_from is not None and colors_from.head_name != head.name:
            raise ValueError(f"colors_from: it was read with {colors_from.head_name!r}, not {head.name!r}; connect a "
                             "readout of the same head")
        readout = extract_readout(model, vae, head, image, positive, timestep, seed,
                                  None if latent is None else latent["samples"])
        return io.NodeOutput(render_readout(readout, colors_from), readout)


NODES = [LoadReadoutHead, ExtractReadout]
