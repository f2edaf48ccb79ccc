"""Command line: `python -m readout.train --checkpoint FILE --kind KIND <data> --output HEAD.safetensors`.

A model kept in separate files (Flux, SD3.5) takes `--diffusion-model FILE --text-encoder FILE [--text-encoder
FILE ...] --clip-type TYPE --vae FILE` instead of --checkpoint, loaded as UNETLoader, the CLIP loaders and VAELoader
load them.
Run from the pack folder with ComfyUI's Python; ComfyUI is found through --comfyui or COMFYUI_PATH.
Under `torchrun --nproc_per_node N -m readout.train ...` each process trains on its share of the data.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from ..heads.architecture import HEAD_KINDS, SPATIAL_KINDS
from .data import DataError, PairDataset, SpatialDataset, TripletDataset
from .dataset_folder import DatasetFolder
from .distributed import close_workers, init_workers
from .frozen_unet import FrozenUNet
from .loop import TrainOptions, Trainer
from .losses import APPEARANCE_MARGIN, CORRESPONDENCE_TEMPERATURE

RELATIVE_DATA = {"correspondence": "--pairs", "appearance": "--triplets", "identity": "--triplets"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The trainer's arguments (see docs/training.md)."""
    parser = argparse.ArgumentParser(prog="python -m readout.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"),
                        help="ComfyUI folder (holds main.py); default: the COMFYUI_PATH environment variable")
    parser.add_argument("--checkpoint", help="full path of an SD1.5 or SDXL checkpoint file (model, CLIP and VAE)")
    parser.add_argument("--diffusion-model", help="instead of --checkpoint: a diffusion model file (Flux, SD3.5, "
                                                  "any model UNETLoader loads from models/diffusion_models)")
    parser.add_argument("--text-encoder", action="append", default=[],
                        help="with --diffusion-model: a text encoder file; repeat for each (Flux: clip_l and t5xxl; "
                             "SD3.5: clip_l, clip_g and t5xxl)")
    parser.add_argument("--clip-type", help="with --diffusion-model: the text encoders' type as the CLIP loaders "
                                            "name it (flux, sd3, stable_diffusion, ...)")
    parser.add_argument("--vae", help="with --diffusion-model: the VAE file")
    parser.add_argument("--kind", required=True, choices=HEAD_KINDS, help="what the head reads out")
    parser.add_argument("--output", required=True, help="the head file to write (.safetensors)")
    parser.add_argument("--images", help="spatial kinds: folder of training images")
    parser.add_argument("--targets", help="spatial kinds: folder of target maps, same file names as --images")
    parser.add_argument("--pairs", help="correspondence: JSON manifest of frame pairs with matched points")
    parser.add_argument("--triplets", help="appearance/identity: JSON manifest of anchor/positive/negative")
    parser.add_argument("--dataset", help="any kind: a dataset folder built in the graph (models/readout_datasets/NAME)"
                                          ", instead of the options above")
    parser.add_argument("--resolution", type=int, default=512, help="train at this square size (multiple of 8)")
    parser.add_argument("--steps", type=int, default=2000, help="total optimizer steps (including resumed ones)")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per step and per process")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    parser.add_argument("--projection-dim", type=int, default=384, help="head width (a multiple of 128)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of examples held out (0: none)")
    parser.add_argument("--val-every", type=int, default=200, help="validate every N steps (0: only at the end)")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="save head and state every N steps")
    parser.add_argument("--resume", help="training state (<output>.state.pt) to continue from")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, head init, noise and timesteps")
    parser.add_argument("--temperature", type=float, default=CORRESPONDENCE_TEMPERATURE,
                        help="correspondence softmax temperature (official: 0.07)")
    parser.add_argument("--margin", type=float, default=APPEARANCE_MARGIN, help="appearance/identity hinge margin")
    parser.add_argument("--max-timestep", type=int, default=1000,
                        help="draw training timesteps from [0, N) (default: the whole schedule)")
    parser.add_argument("--num-workers", type=int, default=0, help="image loading worker processes")
    args = parser.parse_args(argv)
    if not args.output.lower().endswith(".safetensors"):
        parser.error("--output must end in .safetensors")
    separate = (args.diffusion_model, args.text_encoder, args.clip_type, args.vae)
    if args.checkpoint and any(separate):
        parser.error("give either --checkpoint or --diffusion-model with --text-encoder, --clip-type and --vae")
    if not args.checkpoint and not all(separate):
        parser.error("give --checkpoint FILE, or --diffusion-model FILE --text-encoder FILE --clip-type TYPE --vae FILE")
    if args.dataset:
        return args
    if args.kind in SPATIAL_KINDS and not (args.images and args.targets):
        parser.error(f"a {args.kind} head needs --images DIR and --targets DIR")
    if args.kind in RELATIVE_DATA and not getattr(args, RELATIVE_DATA[args.kind][2:]):
        parser.error(f"a {args.kind} head needs {RELATIVE_DATA[args.kind]} MANIFEST.json")
    return args


def use_comfyui(path: str | None) -> None:
    """Make ComfyUI importable and run it on the CPU when there is no GPU."""
    if not path or not os.path.isfile(os.path.join(path, "comfy", "model_patcher.py")):
        raise SystemExit(f"ComfyUI not found at {path!r}: pass --comfyui PATH or set COMFYUI_PATH to the folder "
                         "that holds ComfyUI's main.py")
    path = os.path.abspath(path)
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True


def build_dataset(args: argparse.Namespace):
    """The dataset the kind trains on."""
    if args.dataset:
        folder = os.path.abspath(args.dataset)
        return DatasetFolder.open(os.path.dirname(folder), os.path.basename(folder), args.kind).training_set(
            args.resolution)
    if args.kind in SPATIAL_KINDS:
        return SpatialDataset(args.images, args.targets, args.resolution)
    if args.kind == "correspondence":
        return PairDataset(args.pairs, args.resolution)
    return TripletDataset(args.triplets, args.resolution)


def main(argv: list[str] | None = None) -> int:
    """Check the data, load the checkpoint, train, write the head."""
    args = parse_args(argv)
    try:
        dataset = build_dataset(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    except OSError as error:
        print(f"error: --output: cannot make the folder of {args.output} ({error.strerror}): choose a writable "
              "folder", file=sys.stderr)
        return 2
    workers = init_workers()
    try:
        use_comfyui(args.comfyui)
        try:
            frozen = (FrozenUNet.from_checkpoint(args.checkpoint) if args.checkpoint else
                      FrozenUNet.from_files(args.diffusion_model, args.text_encoder, args.clip_type, args.vae))
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        options = TrainOptions(
            kind=args.kind, output=args.output, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            projection_dim=args.projection_dim, val_fraction=args.val_fraction, val_every=args.val_every,
            checkpoint_every=args.checkpoint_every, resume=args.resume, seed=args.seed,
            temperature=args.temperature, margin=args.margin, num_workers=args.num_workers,
            max_timestep=args.max_timestep)
        result = Trainer(frozen, options, workers).train(dataset)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        close_workers(workers)
    if workers.is_main:
        last_val = f", validation loss {result.val_losses[-1][1]:.4f}" if result.val_losses else ""
        print(f"wrote {result.output} (step {result.step}{last_val}); training state {result.state_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
