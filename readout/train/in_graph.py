"""Training a head inside ComfyUI: the trainer of `python -m readout.train`, on the MODEL, VAE and CLIP a graph
loaded and a dataset folder the graph built, writing into models/readout_heads."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..guidance.loss_plot import plot_losses
from ..heads.files import TRAINING_STATE_SUFFIX
from ..heads.model_folder import head_output_path
from .data import DataError
from .dataset_folder import DatasetFolder, check_name
from .frozen_unet import FrozenUNet
from .loop import StateMismatchError, TrainOptions, Trainer, TrainResult

RESUME, START_OVER = "resume", "start over"
EXISTING_CHOICES = (RESUME, START_OVER)


@dataclass(frozen=True)
class GraphTraining:
    """What the Train Readout Head node asks for (the trainer's options under the node's input names)."""

    kind: str
    head_name: str
    steps: int
    learning_rate: float
    batch_size: int
    resolution: int
    seed: int
    existing: str = RESUME
    validation_fraction: float = 0.1
    projection_dim: int = 384


def output_paths(head_name: str) -> tuple[str, str]:
    """The head file and its training state in models/readout_heads."""
    output = head_output_path(check_name(head_name, "head_name", "my_edge_head"))
    return output, os.path.splitext(output)[0] + TRAINING_STATE_SUFFIX


def resume_state(request: GraphTraining) -> str | None:
    """The state to continue from, if any; refuses to overwrite a head that was not trained here."""
    output, state = output_paths(request.head_name)
    if request.existing not in EXISTING_CHOICES:
        raise DataError(f"existing: {request.existing!r} is not one of {', '.join(EXISTING_CHOICES)}")
    if os.path.isfile(output) and not os.path.isfile(state):
        raise DataError(f"head_name: {output} exists and was not trained in the graph (no "
                        f"{os.path.basename(state)} beside it); choose another head_name (that file is left as it is)")
    return state if request.existing == RESUME and os.path.isfile(state) else None


def train_in_graph(model, vae, clip, dataset: DatasetFolder, request: GraphTraining,
                   on_step: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train (or continue) the head `request.head_name` on the dataset; the head and its state are saved at the end
    and when `on_step` raises (a cancel)."""
    if dataset.kind != request.kind:
        raise DataError(f"dataset / kind: dataset {dataset.name!r} holds {dataset.kind} examples, not {request.kind}; "
                        f"set kind to {dataset.kind} or connect a {request.kind} dataset")
    output, _ = output_paths(request.head_name)
    resume = resume_state(request)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with torch.inference_mode(False), torch.enable_grad():
        examples = dataset.training_set(request.resolution)
        frozen = FrozenUNet(model, vae, clip)
        options = TrainOptions(
            kind=request.kind, output=output, steps=request.steps, batch_size=request.batch_size,
            lr=request.learning_rate, projection_dim=request.projection_dim,
            val_fraction=request.validation_fraction, val_every=max(1, request.steps // 5), checkpoint_every=0,
            resume=resume, seed=request.seed, on_step=on_step)
        try:
            return Trainer(frozen, options).train(examples)
        except StateMismatchError as error:
            raise DataError(f"head_name: {error}; choose another head_name, or set existing to '{START_OVER}' to "
                            "replace it") from error


def loss_plot(result: TrainResult) -> torch.Tensor:
    """The training and validation losses by step, as an IMAGE."""
    return plot_losses([result.train_losses, result.val_losses], ["training loss", "validation loss"],
                       x_label="training steps ->", empty_note="no training steps", by_x=True)


def summary(result: TrainResult, dataset: DatasetFolder, kind: str) -> str:
    """What the run did, for the node's text box."""
    lines = [f"{kind} head, step {result.step}, trained on {dataset.count} example(s) of {dataset.name}",
             f"wrote {result.output}"]
    if result.train_losses:
        lines.append(f"training loss {result.train_losses[0][1]:.4g} -> {result.train_losses[-1][1]:.4g}")
    if result.val_losses:
        lines.append(f"validation loss {result.val_losses[0][1]:.4g} -> {result.val_losses[-1][1]:.4g}")
    return "\n".join(lines)
