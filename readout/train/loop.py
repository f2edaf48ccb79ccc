"""The training loop: batches of frozen-UNet features through the head, validation, checkpoints and resume."""
from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, ContextManager

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from ..heads.files import TRAINING_STATE_SUFFIX, save_head_safetensors
from ..heads.architecture import SPATIAL_KINDS, HeadConfig, ReadoutHead
from ..heads.architecture import DEFAULT_CONTROL_RANGES
from .data import DataError, PairExample, SpatialExample, collate
from .distributed import Workers
from .frozen_unet import FrozenUNet
from ..targets.spatial import spatial_map_loss
from .losses import APPEARANCE_MARGIN, CORRESPONDENCE_TEMPERATURE, correspondence_loss, triplet_loss

VALIDATION_SEED_OFFSET = 1_000_003


class StateMismatchError(DataError):
    """A training state to resume from was made for another kind of head or another model."""


@dataclass(frozen=True)
class TrainOptions:
    """What to train and how long; paths are the output head and an optional training state to resume."""

    kind: str
    output: str
    steps: int = 2000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    projection_dim: int = 384
    val_fraction: float = 0.1
    val_every: int = 200
    checkpoint_every: int = 500
    resume: str | None = None
    seed: int = 0
    temperature: float = CORRESPONDENCE_TEMPERATURE
    margin: float = APPEARANCE_MARGIN
    num_workers: int = 0
    progress: bool = True
    max_timestep: int = 1000
    on_step: Callable[[int, int, float], None] | None = field(default=None, compare=False)
    """Called after every step with (step, steps, loss); an exception it raises (a cancel) stops training after
    the state is saved, so a later run with `resume` continues from that step."""

    @property
    def state_path(self) -> str:
        """The training state (head, optimizer, step, losses) written beside the output head."""
        return os.path.splitext(self.output)[0] + TRAINING_STATE_SUFFIX


@dataclass
class TrainResult:
    """Where the head went, the last step, and the loss history as (step, loss) pairs."""

    output: str
    state_path: str
    step: int
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)


def head_config(kind: str, frozen: FrozenUNet, projection_dim: int = 384) -> HeadConfig:
    """The config of a new head of this kind for this model (family and decoder channels read from it)."""
    spatial = kind in SPATIAL_KINDS
    return HeadConfig(kind=kind, family=frozen.family, dims=tuple(frozen.dims), projection_dim=projection_dim,
                      emb_dim=frozen.embedding_dim,
                      use_output_head=spatial, control_range=DEFAULT_CONTROL_RANGES.get(kind, (-1.0, 1.0)),
                      sparse_loss=kind in ("pose", "edge"))


def new_head(config: HeadConfig, seed: int) -> ReadoutHead:
    """A freshly initialised head, the same for the same seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ReadoutHead(config)


def split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Subset, Subset | None]:
    """A seeded train/validation split; at least one example on each side when val_fraction > 0."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction / validation_fraction must be in [0, 1), got {val_fraction}")
    count = len(dataset)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    num_val = max(1, round(count * val_fraction)) if val_fraction > 0 else 0
    if count - num_val < 1:
        raise DataError(f"{count} example(s) cannot be split into training and validation (--val-fraction / "
                        f"validation_fraction {val_fraction}): add examples or set it to 0")
    val = Subset(dataset, sorted(order[:num_val])) if num_val else None
    return Subset(dataset, sorted(order[num_val:])), val


class Trainer:
    """Trains one head on a frozen model; the same object validates and writes checkpoints."""

    def __init__(self, frozen: FrozenUNet, options: TrainOptions, workers: Workers = Workers()) -> None:
        self.frozen, self.options, self.workers = frozen, options, workers
        self.config = head_config(options.kind, frozen, options.projection_dim)
        if not 1 <= options.max_timestep <= self.config.num_timesteps:
            raise DataError(f"--max-timestep must be in [1, {self.config.num_timesteps}], got {options.max_timestep}")
        self.device = frozen.device
        self.head = new_head(self.config, options.seed).to(self.device)
        self.model = workers.wrap(self.head)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and self.amp_dtype == torch.float16)
        self.step = 0
        self.result = TrainResult(options.output, options.state_path, 0)

    def autocast(self) -> ContextManager[Any]:
        """Mixed precision on a GPU; full precision on the CPU."""
        if self.device.type != "cuda":
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def batch_loss(self, model: nn.Module, batch: list, generator: torch.Generator) -> torch.Tensor:
        """The kind's loss on a batch, at timesteps drawn uniformly from [0, max_timestep) (one per example; the
        images of a pair or triplet share it)."""
        timesteps = torch.randint(0, self.options.max_timestep, (len(batch),), generator=generator)
        first = batch[0]
        if isinstance(first, SpatialExample):
            images = torch.stack([example.image for example in batch])
        elif isinstance(first, PairExample):
            images = torch.cat([torch.stack([e.image_a for e in batch]), torch.stack([e.image_b for e in batch])])
        else:
            images = torch.cat([torch.stack([getattr(e, key) for e in batch])
                                for key in ("anchor", "positive", "negative")])
        groups = images.shape[0] // len(batch)
        reading = self.frozen.read(images, timesteps.repeat(groups), generator, self.config)
        with self.autocast():
            readout = model(reading.features, reading.emb)
        readout = readout.float()
        if isinstance(first, SpatialExample):
            targets = torch.stack([example.target for example in batch]).to(readout.device)
            return spatial_map_loss(readout, targets, self.config.control_range, self.config.sparse_loss).mean()
        parts = readout.chunk(groups)
        if isinstance(first, PairExample):
            size = tuple(images.shape[-2:])
            return correspondence_loss(parts[0], parts[1], [e.points_a for e in batch], [e.points_b for e in batch],
                                       size, self.options.temperature)
        return triplet_loss(*parts, margin=self.options.margin)

    def validate(self, val_set: Subset) -> float:
        """Mean loss over the validation examples at fixed timesteps and noise (comparable between calls)."""
        generator = torch.Generator().manual_seed(self.options.seed + VALIDATION_SEED_OFFSET)
        loader = DataLoader(val_set, batch_size=self.options.batch_size, collate_fn=collate)
        self.head.train(False)
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in loader:
                total += float(self.batch_loss(self.head, batch, generator)) * len(batch)
                count += len(batch)
        self.head.train()
        return total / count

    def save(self) -> None:
        """Write the head (.safetensors) and the training state; rank 0 only."""
        if not self.workers.is_main:
            return
        save_head_safetensors(self.options.output, self.config, self.head.state_dict())
        state = {
            "step": self.step, "config": self.config.to_dict(), "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "train_losses": [list(item) for item in self.result.train_losses],
            "val_losses": [list(item) for item in self.result.val_losses],
        }
        torch.save(state, self.options.state_path + ".part")
        os.replace(self.options.state_path + ".part", self.options.state_path)

    def load(self, path: str) -> None:
        """Continue from a training state written by `save`; refuses one for another kind or model."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = HeadConfig.from_dict(state["config"])
        if saved != self.config:
            raise StateMismatchError(
                f"training state {path} is a {saved.kind} head for {saved.family} decoder channels "
                f"{list(saved.dims)} (projection {saved.projection_dim}); this run trains a {self.config.kind} head "
                f"for {self.config.family} {list(self.config.dims)} (projection {self.config.projection_dim})")
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.result.train_losses = [(int(s), float(v)) for s, v in state["train_losses"]]
        self.result.val_losses = [(int(s), float(v)) for s, v in state["val_losses"]]

    def _validate_and_log(self, val_set: Subset | None, bar: tqdm) -> None:
        if val_set is not None and self.workers.is_main:
            loss = self.validate(val_set)
            self.result.val_losses.append((self.step, loss))
            bar.write(f"step {self.step}: validation loss {loss:.4f}")
        self.workers.barrier()

    def _step_generator(self) -> torch.Generator:
        """Timesteps and noise of a step depend only on the seed, the step and the rank (so resume is exact)."""
        index = self.step * self.workers.world_size + self.workers.rank
        return torch.Generator().manual_seed(self.options.seed * VALIDATION_SEED_OFFSET + 7919 * index + 1)

    def _train_steps(self, loader: DataLoader, sampler: DistributedSampler, val_set: Subset | None, bar: tqdm) -> None:
        """Optimizer steps until `options.steps`, reporting each to `options.on_step`."""
        options = self.options
        while self.step < options.steps:
            epoch, skip = divmod(self.step, len(loader))
            sampler.set_epoch(epoch)
            for batch in islice(loader, skip, None):
                loss = self.batch_loss(self.model, batch, self._step_generator())
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"the loss became {value} at step {self.step}: lower the learning rate "
                                             "(--lr / learning_rate)")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.step += 1
                self.result.train_losses.append((self.step, value))
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
                if options.val_every and self.step % options.val_every == 0 and self.step < options.steps:
                    self._validate_and_log(val_set, bar)
                if options.checkpoint_every and self.step % options.checkpoint_every == 0:
                    self.save()
                if options.on_step is not None:
                    options.on_step(self.step, options.steps, value)
                if self.step >= options.steps:
                    break

    def train(self, dataset: Dataset) -> TrainResult:
        """Train to `options.steps` (from the resumed step), validating every `val_every` steps and saving every
        `checkpoint_every` steps and at the end."""
        options = self.options
        if options.resume:
            self.load(options.resume)
        train_set, val_set = split(dataset, options.val_fraction, options.seed)
        sampler = DistributedSampler(train_set, num_replicas=self.workers.world_size, rank=self.workers.rank,
                                     shuffle=True, seed=options.seed)
        loader = DataLoader(train_set, batch_size=options.batch_size, sampler=sampler, collate_fn=collate,
                            num_workers=options.num_workers)
        bar = tqdm(total=options.steps, initial=self.step, desc=f"training {options.kind} head",
                   disable=not (options.progress and self.workers.is_main), dynamic_ncols=True)
        if self.step == 0:
            self._validate_and_log(val_set, bar)
        self.head.train()
        try:
            self._train_steps(loader, sampler, val_set, bar)
        except BaseException:
            if self.step > 0:
                self.save()
            bar.close()
            raise
        self._validate_and_log(val_set, bar)
        self.save()
        self.workers.barrier()
        bar.close()
        self.result.step = self.step
        return self.result
