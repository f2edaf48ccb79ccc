"""ComfyUI glue: readout guidance on a clone of the user's MODEL through keyed wrappers and a post-CFG function.

Per model evaluation: the APPLY_MODEL wrapper runs the sampler's own UNet call with grad, hooks the
decoder features, runs each active target's head and loss, and backpropagates to x; the post-CFG
function turns the gradients into the correction of `denoised`. The OUTER_SAMPLE wrapper opens and
closes a run. Hooks, weight functions and checkpointing exist only inside the grad pass (`finally`).

Only the sampler's own model evaluation is guided: the first calc_cond_batch of each predict_noise. Extra UNet
calls that other patches make in the same step (SAG's and PAG's post-CFG passes) run as they would without
guidance: no grad, no gradient added, not counted as a guided evaluation.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

import torch

from .batch_split import BatchSplit
from .compatibility import check_compatible
from ..backbones.kernels import differentiable_kernels
from ..backbones.registry import backbone_for_config
from ..targets.base import Readings
from .memory import extra_memory_declared, guided_pass_bytes, out_of_memory_explained
from .grad_pass import (autograd_safe_weights, saved_tensor_copies, gradient_checkpointing,
                        grad_pass_options, normal_copies)
from .precision import COMPUTE_DTYPES, check_compute_dtype, compute_autocast, model_compute_dtype
from .rules.base import CallResult, GuidanceRule, GuidedCall
from .rules.fast import FastRule
from .rules.official import OfficialRule
from .recurrence import AUTO, next_sigma, passes_per_step, renoised
from .run import GuidanceRun
from ..targets.reference import InvertedReference

PATCH_KEY = "readout_guidance"
LOSS_BRANCHES = {"both": (0, 1), "cond": (0,), "uncond": (1,)}
AREA_ONLY_ERROR = (
    "ConditioningSetArea: readout guidance reads the UNet call on the whole latent, but every prompt of its loss "
    "branch ({branch}) is restricted to an area; combine the area prompt with a whole-image prompt "
    "(ConditioningCombine), or set loss_branch of KSampler (Readout Guidance) / Apply Readout Guidance to a branch "
    "whose prompt covers the whole image")
RULE_CLASSES: dict[str, type[GuidanceRule]] = {"fast": FastRule, "official": OfficialRule}
RULES = tuple(RULE_CLASSES)
MAX_RECURRENCE = 8


@dataclass(frozen=True)
class GuidanceOptions:
    """How the guided pass runs: which CFG branch feeds the loss, checkpointing, compute dtype, and the rule
    (fast: ours; official: the official code's step, see rules/official.py)."""

    loss_branch: str = "cond"
    gradient_checkpointing: bool = True
    compute_dtype: str = "auto"
    rule: str = "fast"
    recurrence: int = AUTO
    """Guided passes per guided step (recurrence.py): a count, or AUTO (in runs of at most 8 steps without relative
    targets the family's few-step passes: two, one on Z-Image; else one)."""

    def __post_init__(self) -> None:
        if self.loss_branch not in LOSS_BRANCHES:
            raise ValueError(f"loss_branch: use one of {', '.join(LOSS_BRANCHES)}, got {self.loss_branch!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype: use one of {', '.join(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")
        if self.rule not in RULES:
            raise ValueError(f"rule: use one of {', '.join(RULES)}, got {self.rule!r}")
        if not AUTO <= self.recurrence <= MAX_RECURRENCE:
            raise ValueError(f"recurrence: use {AUTO} (auto) or 1 to {MAX_RECURRENCE} guided passes per step, got "
                             f"{self.recurrence}")
        if self.recurrence > 1 and self.rule != "fast":
            raise ValueError("recurrence: rule official takes one Adam step per sampler step; set recurrence to 1, "
                             "or rule to fast")


@dataclass
class EvaluationGradients:
    """What the rule returned for the current model evaluation, summed over its guided UNet calls."""

    grads: dict[int, torch.Tensor] = field(default_factory=dict)
    losses: dict[int, torch.Tensor] = field(default_factory=dict)
    joint: torch.Tensor | None = None
    sigma: float = 0.0
    skipped_crop: bool = False
    wanted: set[int] = field(default_factory=set)
    guided: set[int] = field(default_factory=set)

    def add(self, result: CallResult) -> None:
        for index, grad in result.gradients.items():
            self.grads[index] = grad if index not in self.grads else self.grads[index] + grad
        for index, loss in result.losses.items():
            self.losses[index] = loss if index not in self.losses else self.losses[index] + loss
        if result.joint_gradient is not None:
            self.joint = result.joint_gradient if self.joint is None else self.joint + result.joint_gradient


class ReadoutGuidancePatch:
    """The guidance of one guided MODEL: its targets, options and relative branch, given when it is made, and the
    state of the run in progress (fresh at each run). It is the MODEL's attachment under PATCH_KEY: clones of the
    model, and copies of its options, share it (`on_model_patcher_clone`, `__deepcopy__`); ComfyUI samples one run
    at a time."""

    def __init__(self, targets: tuple, options: GuidanceOptions, branch_split: int | None = None,
                 reference: InvertedReference | None = None,
                 report_to: Callable[[tuple[list[str], list[str]]], None] | None = None) -> None:
        """`branch_split`: the batch size of each half when a reference half rides along in the batch (relative
        targets), `reference`: the inverted real image that half follows, `report_to`: where the report goes after
        each run (besides `last_report`)."""
        self.rule = RULE_CLASSES[options.rule]()
        self.rule.check_targets(targets)
        self.targets = targets
        self.options = self.rule.options_for(options)
        self.branch_split = branch_split
        self.reference = reference
        self.report_to = report_to
        self.latent_size: tuple[int, int] | None = None
        self.cond_names: dict[object, str] = {}
        self.run = GuidanceRun.fresh([(0.0, 0.0)] * len(targets))
        self.last_run = self.run
        self.last_report: tuple[list[str], list[str]] = ([], [])
        self.evaluation = EvaluationGradients()
        self.joint_gradient: tuple[torch.Tensor, torch.Tensor] | None = None
        self._evaluation_open = False
        self._guiding = False
        self._corrected = False

    def on_model_patcher_clone(self) -> ReadoutGuidancePatch:
        return self

    def __deepcopy__(self, memo: dict) -> ReadoutGuidancePatch:
        return self

    def outer_sample_wrapper(self, executor, *args, **kwargs):
        """Open a fresh run around one sampling, and close it even on error or cancel."""
        noise = args[0] if args else kwargs["noise"]
        self.latent_size = tuple(noise.shape[-2:])
        conds = getattr(getattr(executor, "class_obj", None), "conds", None) or {}
        self.cond_names = {c["uuid"]: name for name, group in conds.items() for c in group or ()
                           if isinstance(c, dict) and "uuid" in c}
        check_compatible(executor.class_obj.model_options)
        patcher = executor.class_obj.model_patcher
        check_compute_dtype(self.options.compute_dtype, patcher.load_device, model_compute_dtype(patcher.model))
        self.run = GuidanceRun.fresh(step_windows(self.targets, patcher.get_model_object("model_sampling")))
        self.evaluation, self.joint_gradient = EvaluationGradients(), None
        try:
            latent_scale = backbone_for_config(patcher.model.model_config).latent_scale
            for target in self.targets:
                target.check_latent_size(self.latent_size, latent_scale)
            return executor(*args, **kwargs)
        finally:
            self.last_run = self.run
            self.evaluation, self.joint_gradient = EvaluationGradients(), None
            self.latent_size, self.cond_names = None, {}
            self.last_report = self.run.report(self.targets, self.options.loss_branch)
            if self.report_to is not None:
                self.report_to(self.last_report)

    def prepare_sampling_wrapper(self, executor, model, noise_shape, *args, **kwargs):
        """Declare the guided pass's memory to ComfyUI while it loads (or offloads) the models for this run."""
        heads = list({id(head): head for target in self.targets for head in target.heads}.values())
        chunks = len(LOSS_BRANCHES[self.options.loss_branch])
        layers = backbone_for_config(model.model.model_config).checkpoint_layers(model.model.diffusion_model)
        extra = guided_pass_bytes(model.model, heads, noise_shape, chunks, self.options.gradient_checkpointing, layers)
        with extra_memory_declared(model.model, extra):
            return executor(model, noise_shape, *args, **kwargs)

    def predict_noise_wrapper(self, executor, x, timestep, model_options={}, seed=None):
        """One model evaluation of the sampler (its first calc_cond_batch is the one to guide), repeated from its own
        re-noised guided step `recurrence` times where a target guides (recurrence.py)."""
        sigma = float(timestep.flatten()[0])
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        model = executor.class_obj.inner_model
        passes = 1
        if self.options.rule == "fast" and self.rule.active_targets(self.targets, self.run.windows, sigma):
            passes = passes_per_step(self.options.recurrence, sigmas, self.branch_split is not None,
                                     backbone_for_config(model.model_config).few_step_passes)
        start = x
        for index in range(passes):
            denoised = self._evaluate(executor, x, timestep, model_options, seed)
            if index == passes - 1 or not self._corrected:
                return denoised
            fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(recurrence_seed(seed, sigma, index)))
            moved = renoised(model.model_sampling, x, denoised, sigma, next_sigma(sigmas, sigma), fresh)
            if moved is None:
                return denoised
            if self.branch_split:
                moved[:self.branch_split] = start[:self.branch_split]
            x = moved
        return denoised

    def _evaluate(self, executor, x, timestep, model_options, seed):
        """One model evaluation; `_corrected` then says whether guidance corrected it (a pass without a correction is
        not repeated: re-noising it would only add noise)."""
        self._evaluation_open, self._corrected = True, False
        try:
            return executor(x, timestep, model_options, seed)
        finally:
            self._evaluation_open = False

    def calc_cond_batch_wrapper(self, executor, *args, **kwargs):
        """Guide the UNet calls of the evaluation's main calc_cond_batch; later ones in the step run unguided."""
        self._guiding, self._evaluation_open = self._evaluation_open, False
        try:
            return executor(*args, **kwargs)
        finally:
            self._guiding = False

    def _roles(self, transformer_options: dict) -> list[int]:
        """Each chunk's role, 0 for the guider's positive prompt and 1 for any other: by the chunk's cond uuid when
        the guider names its conds (DualCFGGuider batches its negative first), else ComfyUI's cond_or_uncond."""
        roles = transformer_options.get("cond_or_uncond", [])
        uuids = transformer_options.get("uuids", [])
        if self.cond_names and len(uuids) == len(roles) and all(u in self.cond_names for u in uuids):
            return [0 if self.cond_names[u] == "positive" else 1 for u in uuids]
        return list(roles)

    def _loss_chunks(self, cond_or_uncond: list[int], batch: int) -> tuple[int, ...]:
        """Positions of the CFG chunks whose readout feeds the loss (none when the batch is not understood)."""
        if not cond_or_uncond or batch % len(cond_or_uncond):
            return ()
        if self.branch_split and batch // len(cond_or_uncond) != 2 * self.branch_split:
            return ()
        wanted = LOSS_BRANCHES[self.options.loss_branch]
        return tuple(i for i, role in enumerate(cond_or_uncond) if role in wanted)

    def apply_model_wrapper(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                            transformer_options={}, **kwargs):
        """Run the sampler's UNet call, with grad for the loss branch, and collect each active target's gradient
        w.r.t. x; chunks outside the loss branch, and calls on an area of the latent (ConditioningSetArea), run
        without autograd: the targets read the whole latent."""
        sigma = float(t[0])
        active = self.rule.active_targets(self.targets, self.run.windows, sigma) if self._guiding else []
        cond_or_uncond = transformer_options.get("cond_or_uncond", [])
        grad_chunks = self._loss_chunks(self._roles(transformer_options), x.shape[0]) if active else ()
        self.evaluation.wanted.update(active)
        if grad_chunks and self.latent_size not in (None, tuple(x.shape[-2:])):
            self.evaluation.skipped_crop = True
            grad_chunks = ()
        if not grad_chunks:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        self.evaluation.sigma = sigma
        self.evaluation.guided.update(active)
        x = self._with_reference(x.detach().clone(), chunks_of(x.shape[0], transformer_options), sigma)
        split = BatchSplit(x.shape[0], len(cond_or_uncond), grad_chunks)
        calls = (split.grad_chunks, split.rest_chunks) if split.rest_chunks else (split.grad_chunks,)
        outputs = {}
        for chunks in calls:
            args = split.take((x, t, c_concat, c_crossattn, control, kwargs), chunks)
            options = split.take_options(transformer_options, chunks)
            if chunks == split.grad_chunks:
                outputs[chunks] = self._grad_pass(executor, active, *args, options)
            else:
                part_kwargs = args[-1]
                outputs[chunks] = executor(*args[:-1], options, **part_kwargs)
        return outputs[split.grad_chunks] if len(outputs) == 1 else split.merge(outputs)

    def _grad_pass(self, executor, active: list[int], x, t, c_concat, c_crossattn, control, kwargs,
                   transformer_options: dict) -> torch.Tensor:
        """The UNet call on the loss chunks with autograd: features, each target's loss, gradients w.r.t. x."""
        base = executor.class_obj
        diffusion_model = base.diffusion_model
        backbone = backbone_for_config(base.model_config)
        autocast = compute_autocast(self.options.compute_dtype, x.device)
        chunks = chunks_of(x.shape[0], transformer_options)
        tokens = [token for index in active for token in self.targets[index].attention_tokens()]
        with out_of_memory_explained(x, self.options), torch.inference_mode(False), torch.enable_grad(), \
                ExitStack() as stack:
            x_grad = x.clone().requires_grad_(True)
            t_copy, c_concat, c_crossattn, control, kwargs = normal_copies((t, c_concat, c_crossattn, control, kwargs))
            stack.enter_context(autograd_safe_weights(diffusion_model))
            stack.enter_context(differentiable_kernels())
            if self.options.gradient_checkpointing:
                stack.enter_context(gradient_checkpointing(backbone.checkpoint_layers(diffusion_model)))
            elif backbone.blocks_add_in_place:
                stack.enter_context(saved_tensor_copies(backbone.checkpoint_layers(diffusion_model)))
            store = stack.enter_context(backbone.capture_features(diffusion_model))
            attention = None
            if tokens:
                attention = stack.enter_context(backbone.capture_attention(diffusion_model, tokens))
            with autocast:
                out = executor(x_grad, t_copy, c_concat, c_crossattn, control,
                               grad_pass_options(transformer_options), **kwargs)
            readings = Readings(store.complete(), attention, tuple(x.shape[-2:]),
                                backbone.head_timesteps(base.model_sampling, t_copy), backbone, diffusion_model, autocast)
            self.evaluation.add(self.rule.backprop(GuidedCall(self.targets, active, readings, x_grad,
                                                              self.evaluation.sigma, chunks, self.branch_split)))
            store.clear()
        return out.detach()

    def _with_reference(self, x: torch.Tensor, all_chunks: list[slice], sigma: float) -> torch.Tensor:
        """Put the inverted real image's latent at this sigma into each chunk's reference half."""
        if self.reference is not None and self.branch_split:
            latent = self.reference.latent_at(sigma).to(x)
            for chunk in all_chunks:
                x[chunk.start:chunk.start + self.branch_split] = latent
        return x

    def post_cfg_function(self, args: dict) -> torch.Tensor:
        """denoised' = denoised - sigma * s * sum_k w_k n_k from this evaluation's gradients (s: the family's
        weight_scale)."""
        denoised = args["denoised"]
        evaluation, self.evaluation = self.evaluation, EvaluationGradients()
        for index in evaluation.wanted - evaluation.guided:
            self.run.targets[index].missed += 1
        if evaluation.skipped_crop and not evaluation.losses:
            raise ValueError(AREA_ONLY_ERROR.format(branch=self.options.loss_branch))
        for index, loss in evaluation.losses.items():
            self.run.record_loss(index, evaluation.sigma, loss)
        if evaluation.joint is not None:
            finite = torch.isfinite(evaluation.joint).all()
            self.run.record_finite(sorted(evaluation.losses), finite)
            self.joint_gradient = (evaluation.joint, finite)
        if not evaluation.grads:
            return denoised
        scale = backbone_for_config(args["model"].model_config).weight_scale
        for index, grad in evaluation.grads.items():
            self.run.add_direction(index, self.targets[index].weight * scale, grad)
        correction = self.run.take_correction(args["sigma"], denoised)
        if correction is None:
            return denoised
        self._corrected = True
        return denoised + correction


    def take_joint_gradient(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The joint gradient the last guided evaluation left (rule official) and whether it is finite, once."""
        left, self.joint_gradient = self.joint_gradient, None
        return left


def recurrence_seed(seed: int | None, sigma: float, index: int) -> int:
    """The seed of one re-noising: the run's seed, the step's sigma and the pass (the same run redraws the same)."""
    return ((seed or 0) * 1_000_003 + int(sigma * 1e6) * 31 + index) % (2 ** 63)


def step_windows(targets: tuple, model_sampling) -> list[tuple[float, float]]:
    """Each target's step window as the sigma range (low, high) it guides in."""
    return [(model_sampling.percent_to_sigma(t.window.end_percent),
             model_sampling.percent_to_sigma(t.window.start_percent)) for t in targets]


def chunks_of(batch: int, transformer_options: dict) -> list[slice]:
    """The batch slices of each cond/uncond chunk of one UNet call."""
    count = max(len(transformer_options.get("cond_or_uncond", [])), 1)
    size = batch // count
    return [slice(i * size, (i + 1) * size) for i in range(count)]


def apply_readout_guidance(model, targets: tuple, options: GuidanceOptions, allow_relative: bool = False,
                           branch_split: int | None = None, reference: InvertedReference | None = None,
                           report_to: Callable | None = None):
    """A clone of model that samples with these targets (added to any guidance it already carries), and its patch
    (ReadoutGuidancePatch's arguments)."""
    import comfy.patcher_extension as pe

    relative = [t.label for t in targets if t.relative]
    if not allow_relative and relative:
        raise ValueError(f"guidance: relative targets ({', '.join(relative)}) need KSampler (Readout Guidance), "
                         "which samples their reference branch next to the edit")
    check_compatible(model.model_options)
    check_targets_fit(model, targets, options)
    guided = model.clone()
    previous = find_patch(guided)
    if previous is not None:
        targets = previous.targets + tuple(targets)
        guided.model_options["sampler_post_cfg_function"] = [
            fn for fn in guided.model_options.get("sampler_post_cfg_function", [])
            if getattr(fn, "__self__", None) is not previous
        ]
    patch = ReadoutGuidancePatch(tuple(targets), options, branch_split, reference, report_to)
    guided.set_attachments(PATCH_KEY, patch)
    wrappers = {
        pe.WrappersMP.OUTER_SAMPLE: patch.outer_sample_wrapper,
        pe.WrappersMP.PREPARE_SAMPLING: patch.prepare_sampling_wrapper,
        pe.WrappersMP.PREDICT_NOISE: patch.predict_noise_wrapper,
        pe.WrappersMP.CALC_COND_BATCH: patch.calc_cond_batch_wrapper,
        pe.WrappersMP.APPLY_MODEL: patch.apply_model_wrapper,
        pe.WrappersMP.SAMPLER_SAMPLE: patch.rule.sampler_sample_wrapper(patch),
    }
    for kind, wrapper in wrappers.items():
        guided.remove_wrappers_with_key(kind, PATCH_KEY)
        if wrapper is not None:
            guided.add_wrapper_with_key(kind, PATCH_KEY, wrapper)
    # at cfg 1 ComfyUI skips the negative prompt's half unless told otherwise: a loss branch that reads it needs it
    needs_uncond = 1 in LOSS_BRANCHES[patch.options.loss_branch]
    guided.set_model_sampler_post_cfg_function(patch.post_cfg_function, disable_cfg1_optimization=needs_uncond)
    heads = {id(head.patcher): head.patcher for t in patch.targets for head in t.heads}
    guided.set_additional_models(PATCH_KEY, list(heads.values()))
    if not patch.targets:
        logging.info("readout guidance: no targets, the model samples as before")
    return guided, patch


def check_targets_fit(model, targets: tuple, options: GuidanceOptions) -> None:
    """Each target must be able to guide this model with this loss branch (heads of its family, its CLIP)."""
    for target in targets:
        target.check_model(model, options.loss_branch)


def find_patch(model) -> ReadoutGuidancePatch | None:
    """The guidance a MODEL already carries, if any (its attachment)."""
    return model.get_attachment(PATCH_KEY)
