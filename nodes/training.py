"""Nodes that build training datasets from any node's images and train a readout head in the graph."""
from __future__ import annotations

import torch

from ..readout.heads.architecture import HEAD_KINDS, SPATIAL_KINDS
from ..readout.heads.head_model import load_head_model
from ..readout.heads.model_folder import datasets_root
from ..readout.targets.points import check_inside, parse_drag_pairs
from ..readout.train.dataset_folder import DatasetFolder, dataset_names
from ..readout.train.progress import GraphProgress
from ..readout.train.in_graph import EXISTING_CHOICES, RESUME, GraphTraining, loss_plot, summary, train_in_graph
from ..readout.train.warps import WARP_MODES, random_warped_pair
from .common import CATEGORY, ReadoutHeadType, io, require_finite, seed_input

ReadoutDatasetType = io.Custom("READOUT_DATASET")
TRIPLET_KINDS = ("appearance", "identity")
DATASET_OUTPUT_TIP = "The dataset (its folder under models/readout_datasets), for Train Readout Head."


def dataset_name_input(default: str) -> io.String.Input:
    return io.String.Input("dataset_name", default=default, tooltip=(
        "Folder under models/readout_datasets. Examples are appended to it on every run (queue again with other "
        "images to grow it); a new name starts a new dataset."))


def dataset_schema_parts(display_name: str, description: str, inputs: list[io.Input]) -> dict:
    """The schema of a dataset node but its id: it writes to disk (an output node) and outputs the dataset."""
    return dict(display_name=display_name, category=CATEGORY, is_output_node=True, description=description,
                inputs=inputs, outputs=[ReadoutDatasetType.Output(display_name="dataset", tooltip=DATASET_OUTPUT_TIP)])


def dataset_result(folder: DatasetFolder) -> io.NodeOutput:
    """The dataset, with its example count shown on the node."""
    return io.NodeOutput(folder, ui={"text": [folder.describe()]})


def open_for_append(name: str, kind: str) -> DatasetFolder:
    return DatasetFolder.open(datasets_root(), name, kind, create=True)


def require_same_batch(first: torch.Tensor, second: torch.Tensor, first_name: str, second_name: str) -> None:
    """Two IMAGE batches that pair up one to one: same count, same size."""
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"{second_name}: {second.shape[0]} image(s) for {first.shape[0]} {first_name}; connect one "
                         f"per {first_name[:-1] if first_name.endswith('s') else first_name} (the same batch size)")
    if first.shape[1:3] != second.shape[1:3]:
        raise ValueError(f"{second_name}: {second.shape[2]}x{second.shape[1]} px but the {first_name} are "
                         f"{first.shape[2]}x{first.shape[1]}; resize them to the same size (Upscale Image)")


class ReadoutSpatialDataset(io.ComfyNode):
    """Images and their control maps (from any preprocessor node) appended to a spatial training dataset."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ReadoutSpatialDataset", **dataset_schema_parts(
            "Readout Dataset (Spatial)",
            "Appends images and their label maps (e.g. from Canny or a depth preprocessor) to a dataset for a pose, "
            "depth or edge head.",
            [
                io.Image.Input("images", tooltip="The images the head will read (any loader or sampler)."),
                io.Image.Input("labels", tooltip=(
                    "Their control maps, one per image and of the same size: e.g. Canny of the images for an edge "
                    "head, a depth preprocessor's output for a depth head.")),
                dataset_name_input("my_edge_data"),
                io.Combo.Input("kind", options=list(SPATIAL_KINDS), default="edge", tooltip=(
                    "What the labels are. pose and edge are sparse maps (the loss weights their drawn pixels); "
                    "depth is a dense map. A new control (line art, segmentation) trains as edge if sparse, "
                    "as depth if dense.")),
            ],
        ))

    @classmethod
    def execute(cls, images: torch.Tensor, labels: torch.Tensor, dataset_name: str, kind: str) -> io.NodeOutput:
        require_same_batch(images, labels, "images", "labels")
        folder = open_for_append(dataset_name, kind)
        folder.add_spatial(images, labels)
        return dataset_result(folder)


class ReadoutCorrespondenceDataset(io.ComfyNode):
    """Pairs with exact point matches, from random warps of images or from two frames and a points list."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ReadoutCorrespondenceDataset", **dataset_schema_parts(
            "Readout Dataset (Correspondence)",
            "Appends image pairs with matched points to a dataset for a correspondence (drag) head: each image and "
            "a random warp of it (exact matches), or two frames and their points.",
            [
                io.Image.Input("images", tooltip="The images (first frames)."),
                dataset_name_input("my_pairs"),
                io.Combo.Input("warp", options=list(WARP_MODES), default="affine", tooltip=(
                    "The random warp that makes each pair: affine (rotation, scale, shear, shift), perspective, "
                    "or elastic (a smooth random deformation). Ignored when second_images is connected.")),
                io.Float.Input("strength", default=0.5, min=0.0, max=1.0, step=0.05, tooltip=(
                    "How strong the warps are (1: up to 30 degrees, 30% scale, 15% shift).")),
                io.Int.Input("pairs_per_image", default=1, min=1, max=64, tooltip="Random warps made of each image."),
                io.Int.Input("points_per_pair", default=32, min=1, max=1024,
                             tooltip="Matched points drawn per warped pair."),
                seed_input("Seed of the warps and the points drawn."),
                io.Image.Input("second_images", optional=True, tooltip=(
                    "Second frames, one per image: pairs (image, second image) matched by points instead of warps.")),
                io.String.Input("points", default="", multiline=True, optional=True, tooltip=(
                    'With second_images: the matches as [{"source": [x, y], "target": [x, y]}, ...], source in '
                    "the first frame, target in the second (pixels; the points editor's format).")),
            ],
        ))

    @classmethod
    def execute(cls, images: torch.Tensor, dataset_name: str, warp: str, strength: float, pairs_per_image: int,
                points_per_pair: int, seed: int, second_images: torch.Tensor | None = None,
                points: str = "") -> io.NodeOutput:
        require_finite(strength=strength)
        if second_images is not None:
            pairs = cls.frame_pairs(images, second_images, points)
        else:
            if points.strip():
                raise ValueError("points: they match a first and a second frame; connect second_images too, or clear "
                                 "points to make pairs by random warps")
            generator = torch.Generator().manual_seed(seed)
            pairs = []
            for image in images:
                for _ in range(pairs_per_image):
                    pair = random_warped_pair(image, warp, strength, points_per_pair, generator)
                    if len(pair.points_a):
                        pairs.append((pair.image_a, pair.image_b, pair.points_a, pair.points_b))
            if not pairs:
                raise ValueError("strength: every warp moved the whole image out of view, so no point matches; "
                                 "lower strength")
        folder = open_for_append(dataset_name, "correspondence")
        folder.add_pairs(pairs)
        return dataset_result(folder)

    @staticmethod
    def frame_pairs(images: torch.Tensor, second_images: torch.Tensor, points: str) -> list[tuple]:
        """(first frame, second frame, sources, targets) for each pair of frames."""
        require_same_batch(images, second_images, "images", "second_images")
        pairs = parse_drag_pairs(points, "points")
        if not pairs:
            raise ValueError('points: empty; with second_images, list the matches as [{"source": [x, y], '
                             '"target": [x, y]}, ...]')
        check_inside(pairs, images.shape[2], images.shape[1], "points")
        sources = torch.tensor([pair.source for pair in pairs], dtype=torch.float32)
        targets = torch.tensor([pair.target for pair in pairs], dtype=torch.float32)
        return [(first, second, sources, targets) for first, second in zip(images, second_images)]


class ReadoutTripletDataset(io.ComfyNode):
    """Anchor / positive / negative images appended to an appearance or identity dataset."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ReadoutTripletDataset", **dataset_schema_parts(
            "Readout Dataset (Appearance / Identity)",
            "Appends triplets to a dataset for an appearance or identity head: the positive looks like the anchor, "
            "the negative does not.",
            [
                io.Image.Input("anchors", tooltip="The anchor images."),
                io.Image.Input("positives", tooltip=(
                    "One per anchor, with the anchor's appearance: e.g. the anchor re-sampled at low denoise "
                    "(VAE Encode -> KSampler at denoise 0.3-0.5 -> VAE Decode), as the official triplets.")),
                dataset_name_input("my_appearance_data"),
                io.Combo.Input("kind", options=list(TRIPLET_KINDS), default="appearance",
                               tooltip="appearance: colours and textures; identity: who a face is."),
                io.Image.Input("negatives", optional=True, tooltip=(
                    "One per anchor, of another appearance. Not connected: each anchor's negative is the next "
                    "anchor of the batch (needs at least 2 anchors).")),
            ],
        ))

    @classmethod
    def execute(cls, anchors: torch.Tensor, positives: torch.Tensor, dataset_name: str, kind: str,
                negatives: torch.Tensor | None = None) -> io.NodeOutput:
        require_same_batch(anchors, positives, "anchors", "positives")
        if negatives is None:
            if anchors.shape[0] < 2:
                raise ValueError("negatives: not connected and only 1 anchor, so there is no other image to be its "
                                 "negative; connect negatives or batch at least 2 anchors")
            negatives = anchors.roll(-1, 0)
        require_same_batch(anchors, negatives, "anchors", "negatives")
        folder = open_for_append(dataset_name, kind)
        folder.add_triplets(anchors, positives, negatives)
        return dataset_result(folder)


class LoadReadoutDataset(io.ComfyNode):
    """A dataset built earlier, to train on without adding to it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadReadoutDataset", display_name="Load Readout Dataset", category=CATEGORY,
            description="Loads a dataset folder from models/readout_datasets.",
            inputs=[io.Combo.Input("dataset_name", options=dataset_names(datasets_root()),
                                   tooltip="A dataset built by a Readout Dataset node.")],
            outputs=[ReadoutDatasetType.Output(display_name="dataset", tooltip=DATASET_OUTPUT_TIP)],
        )

    @classmethod
    def fingerprint_inputs(cls, dataset_name: str) -> str:
        """The example count, so a dataset that grew is loaded again."""
        try:
            return f"{dataset_name}:{DatasetFolder.open(datasets_root(), dataset_name).count}"
        except (ValueError, OSError):
            return dataset_name

    @classmethod
    def execute(cls, dataset_name: str) -> io.NodeOutput:
        return dataset_result(DatasetFolder.open(datasets_root(), dataset_name))


class TrainReadoutHead(io.ComfyNode):
    """Train a readout head on a dataset with the graph's model, as `python -m readout.train` does."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TrainReadoutHead", display_name="Train Readout Head", category=CATEGORY, is_output_node=True,
            description="Trains a head on the model's decoder features (the model stays frozen) and writes "
                        "models/readout_heads/<head_name>.safetensors. Cancel stops it with its state saved; queue "
                        "again to resume.",
            inputs=[
                io.Model.Input("model", tooltip="The model the head will guide (SD1.5 or SDXL family)."),
                io.Vae.Input("vae", tooltip="The model's VAE: encodes the dataset's images."),
                io.Clip.Input("clip", tooltip="The model's text encoder: the head trains on the empty prompt."),
                ReadoutDatasetType.Input("dataset", tooltip="From a Readout Dataset node or Load Readout Dataset."),
                io.Combo.Input("kind", options=list(HEAD_KINDS), default="edge",
                               tooltip="What the head reads out; must be the dataset's kind."),
                io.String.Input("head_name", default="my_edge_head", tooltip=(
                    "File name in models/readout_heads (.safetensors is added); its training state is kept "
                    "beside it as <head_name>.state.pt to resume.")),
                io.Int.Input("steps", default=2000, min=1, max=1_000_000, tooltip=(
                    "Total optimizer steps, counting resumed ones (raise it and queue again to train on).")),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5, round=1e-7,
                               tooltip="AdamW learning rate (the official training: 1e-4)."),
                io.Int.Input("batch_size", default=4, min=1, max=256, tooltip="Examples per step."),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=8, tooltip=(
                    "Images are resized to this square size (SD1.5: 512, SDXL: 1024; smaller is faster).")),
                seed_input("Seed of the validation split, the head's initial weights, the noise and timesteps."),
                io.Combo.Input("existing", options=list(EXISTING_CHOICES), default=RESUME, tooltip=(
                    "When head_name was trained before: resume from its saved state (after a cancel, or with "
                    "more steps), or start over and replace it.")),
                io.Float.Input("validation_fraction", default=0.1, min=0.0, max=0.9, step=0.05, optional=True,
                               tooltip="Share of the examples held out to measure the validation loss (0: none)."),
                io.Int.Input("projection_dim", default=384, min=128, max=1024, step=128, optional=True,
                             tooltip="Head width (the official heads: 384)."),
            ],
            outputs=[
                ReadoutHeadType.Output(display_name="head", tooltip="The trained head, for ReadoutTarget and "
                                                                "ExtractReadout (also listed in Load Readout Head)."),
                io.Image.Output(display_name="loss_plot", tooltip="Training and validation loss by step."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, clip, dataset: DatasetFolder, kind: str, head_name: str, steps: int,
                learning_rate: float, batch_size: int, resolution: int, seed: int, existing: str = RESUME,
                validation_fraction: float = 0.1, projection_dim: int = 384) -> io.NodeOutput:
        require_finite(learning_rate=learning_rate, validation_fraction=validation_fraction)
        request = GraphTraining(kind, head_name, steps, learning_rate, batch_size, resolution, seed, existing,
                                validation_fraction, projection_dim)
        result = train_in_graph(model, vae, clip, dataset, request, GraphProgress(steps))
        head = load_head_model(result.output)
        text = summary(result, dataset, kind)
        return io.NodeOutput(head, loss_plot(result), ui={"text": [text]})


NODES = [ReadoutSpatialDataset, ReadoutCorrespondenceDataset, ReadoutTripletDataset, LoadReadoutDataset,
         TrainReadoutHead]
