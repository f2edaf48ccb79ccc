"""Rule `official`: the official code's guided DDIM step, recomputed here from its description on the tiny model,
and each official loss choice against the fast rule's."""
from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import TinyBed, call_node, pack_module

STEPS = 3
CFG = 5.0
SEED = 5


class Bed(TinyBed):
    """The tiny model and heads in float64: the UNet's backward in the pack and in the reference runs its ops in
    another order, and in float32 such last-bit differences flip some of Adam's sign steps; in float64 they stay
    far below float32's resolution of the gradient the latent receives."""

    def __init__(self) -> None:
        super().__init__("a dancer on a beach")
        unet = self.model.model.diffusion_model
        with torch.inference_mode():
            unet.to(torch.float64)
        unet.dtype = torch.float64
        self.runs: dict[tuple, torch.Tensor] = {}
        self.pose = self.load_head("pose")
        self.depth = self.load_head("depth")
        readout = self.readout(self.ksampler(self.model, seed=11), self.pose)
        self.target_unit = pack_module("readout.heads.readouts").spatial_to_unit(readout, self.pose.config.control_range)

    def load_head(self, kind: str):
        head = super().load_head(kind)
        with torch.inference_mode(False):
            head.module.double()
        return head

    def ksampler(self, model, seed: int = SEED, sampler: str = "ddim") -> torch.Tensor:
        return call_node("KSampler", model=model, seed=seed, steps=STEPS, cfg=CFG, sampler_name=sampler,
                         scheduler="ddim_uniform", positive=self.pos, negative=self.neg, latent_image=self.latent,
                         denoise=1.0)[0]["samples"]

    def target(self, weight: float, head=None):
        return call_node("ReadoutTarget", head=head or self.pose, weight=weight, start_percent=0.0, end_percent=1.0,
                         target_image=self.target_unit.movedim(1, -1))[0]

    def guided(self, guidance, rule: str = "official", sampler: str = "ddim") -> torch.Tensor:
        key = (guidance[0].weight, rule, sampler)
        if key not in self.runs:
            self.runs[key] = self._guided(guidance, rule, sampler)
        return self.runs[key]

    def _guided(self, guidance, rule: str, sampler: str) -> torch.Tensor:
        return call_node("ReadoutGuidedKSampler", model=self.model, seed=SEED, steps=STEPS, cfg=CFG,
                         sampler_name=sampler, scheduler="ddim_uniform", positive=self.pos, negative=self.neg,
                         latent_image=self.latent, denoise=1.0, guidance=guidance, rule=rule)[0]["samples"]


@pytest.fixture(scope="module")
def bed() -> Bed:
    return Bed()


class Reference:
    """The official procedure written out from its description: per step, the loss summed over the negative
    and positive halves (official_loss: plain MSE times 0.5 ((latent max - latent min) / control range width)^2),
    a fresh torch Adam on the VP latent
    x_t = x / sqrt(1 + sigma^2), a new CFG prediction at the moved latent, and the DDIM (eta 0) update, written in
    ComfyUI's k-diffusion space: x_next = x + (x - denoised) / sigma * (sigma_next - sigma)."""

    def __init__(self, bed: Bed, lr: float) -> None:
        import comfy.samplers

        self.bed, self.lr = bed, lr
        self.base = bed.model.model
        self.sampling = self.base.model_sampling
        self.sigmas = comfy.samplers.KSampler(bed.model, steps=STEPS, device="cpu", sampler="ddim",
                                              scheduler="ddim_uniform", denoise=1.0).sigmas
        self.contexts = [bed.neg[0][0], bed.pos[0][0]]
        self.target = bed.target(1.0)[0]
        self.halves = (0, 1)

    def predict(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """CFG from one UNet call on [negative, positive], batched as ComfyUI batches them (same rounding)."""
        uncond, cond = self.base.apply_model(torch.cat([x, x]), sigma.reshape(1).repeat(2),
                                             c_crossattn=torch.cat(self.contexts)).chunk(2)
        return uncond + (cond - uncond) * CFG

    def loss_gradient(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """dL/dx_t of the loss summed over the negative and positive halves of one UNet call, by the chain rule
        from dL/dx (the loss itself is official_loss, checked against its formula below)."""
        grad_pass = pack_module("readout.guidance.grad_pass")
        backbone = pack_module("readout.backbones.registry").backbone_for(self.bed.model)
        unet = self.base.diffusion_model
        scale = math.sqrt(1 + float(sigma) ** 2)
        with torch.inference_mode(False), torch.enable_grad(), grad_pass.autograd_safe_weights(unet):
            rows = torch.cat([x, x]).requires_grad_(True)
            x_t = rows.detach() / scale
            width = x_t.max() - x_t.min()
            sigmas = sigma.reshape(1).repeat(2).clone()
            with backbone.capture_features(unet) as store:
                self.base.apply_model(rows, sigmas, c_crossattn=torch.cat(self.contexts).clone())
                emb = backbone.head_embedding(unet, self.bed.pose.config, self.sampling.timestep(sigmas).float())
                readouts = self.bed.pose.module(store.complete(), emb).float()
            total = sum(self.target.official_loss(readouts[i:i + 1], None, width) for i in self.halves)
            grad = torch.autograd.grad(total.sum(), rows)[0]
        return (grad[:1] + grad[1:]) * scale

    def sample(self, guided_steps: int) -> torch.Tensor:
        import comfy.sample

        noise = comfy.sample.prepare_noise(self.bed.latent["samples"], SEED)
        sigma_max = float(self.sampling.sigma_max)
        first = float(self.sigmas[0])
        max_denoise = math.isclose(sigma_max, first, rel_tol=1e-5) or first > sigma_max
        x = self.sampling.noise_scaling(self.sigmas[0], noise, torch.zeros_like(noise), max_denoise)
        with torch.inference_mode():
            for i in range(STEPS):
                sigma, following = self.sigmas[i], self.sigmas[i + 1]
                if i < guided_steps:
                    scale = math.sqrt(1 + float(sigma) ** 2)
                    with torch.inference_mode(False):
                        x_t = (x / scale).clone().requires_grad_(True)
                        optimizer = torch.optim.Adam([x_t], lr=self.lr)
                        x_t.grad = self.loss_gradient(x, sigma)
                        optimizer.step()
                        x = x_t.detach().clone() * scale
                denoised = self.predict(x, sigma)
                x = x + (x - denoised) / sigma * (following - sigma)
        return self.base.process_latent_out(x)


@pytest.mark.every_comfyui
def test_three_official_ddim_steps_match_the_description(bed):
    """Plain DDIM: the description and ComfyUI agree bit for bit. Guided: to 1e-5 (measured: equal). Taking the loss
    over the positive half only (as fast does by default) is far outside that tolerance."""
    weight = 1.0
    lr = 2e-2 * weight / pack_module("readout.guidance.run").OFFICIAL_WEIGHT
    reference = Reference(bed, lr)
    plain = bed.ksampler(bed.model)
    assert torch.equal(reference.sample(guided_steps=0), plain)
    official = bed.guided(bed.target(weight))
    expected = reference.sample(guided_steps=STEPS)
    tolerance = 1e-5
    assert (expected - plain).abs().max() > 1000 * tolerance, "the three guided steps move the sample"
    torch.testing.assert_close(official, expected, rtol=0, atol=tolerance)
    reference.halves = (1,)
    assert (reference.sample(guided_steps=STEPS) - official).abs().max() > 100 * tolerance


def test_weight_zero_is_plain_ddim_bit_for_bit(bed):
    assert torch.equal(bed.guided(bed.target(0.0)), bed.ksampler(bed.model))


def test_euler_ancestral_is_ddim_with_eta_one_and_keeps_its_noise(bed):
    """Weight 0 under official steps euler_ancestral one step at a time: the same noise as one plain run."""
    plain = bed.ksampler(bed.model, sampler="euler_ancestral")
    assert torch.equal(bed.guided(bed.target(0.0), sampler="euler_ancestral"), plain)


def test_apply_readout_guidance_with_ksampler_takes_the_same_official_steps(bed):
    patched = call_node("ApplyReadoutGuidance", model=bed.model, guidance=bed.target(1.0), rule="official")[0]
    torch.testing.assert_close(bed.ksampler(patched), bed.guided(bed.target(1.0)), rtol=0, atol=1e-6)


def test_other_samplers_are_refused_with_the_inputs_to_change(bed):
    with pytest.raises(ValueError, match=r"sampler_name: rule official .* not 'dpmpp_2m'.* rule to fast"):
        bed.guided(bed.target(1.0), sampler="dpmpp_2m")
    patched = call_node("ApplyReadoutGuidance", model=bed.model, guidance=bed.target(1.0), rule="official")[0]
    with pytest.raises(ValueError, match=r"sampler_name: rule official .* not 'heun'"):
        bed.ksampler(patched, sampler="heun")


def test_self_guidance_is_refused_under_official(bed):
    edit = call_node("SelfGuidanceTarget", clip=bed.clip, prompt="a dancer on a beach", words="dancer",
                     edit="move_by", dx=0.2, dy=0.0, x=0.5, y=0.5, size_factor=1.5, weight=1.0, start_percent=0.0,
                     end_percent=0.5)[0]
    with pytest.raises(ValueError, match="rule: official has no self-guidance"):
        bed._guided(edit, "official", "ddim")


def spatial_loss_pair(bed, head, readout, width):
    """(fast loss, official loss) of one spatial target on a readout, in a latent of range `width`."""
    low, high = head.config.control_range
    target = call_node("ReadoutTarget", head=head, weight=1.0, start_percent=0.0, end_percent=1.0,
                       target_image=torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(0)).round())[0][0]
    scale = 0.5 * (width / (high - low)) ** 2
    return target.loss(readout), target.official_loss(readout, None, torch.tensor(width)) / scale


@pytest.mark.parametrize("kind, same", [("depth", True), ("pose", False)])
def test_official_spatial_loss_is_plain_mse_in_the_latent_range(bed, kind, same):
    """Depth (dense): the official loss is ours times 0.5 (range / control range)^2. Pose (sparse): ours balances
    drawn and empty pixels while guiding, the official one is a plain mean."""
    head = bed.depth if kind == "depth" else bed.pose
    readout = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5
    fast, official = spatial_loss_pair(bed, head, readout, width=7.0)
    if same:
        torch.testing.assert_close(official, fast)
    else:
        assert (official - fast).abs().min() > 1e-3


def drag_losses(points: list, image_size: tuple[int, int]):
    relative = pack_module("readout.targets.relative")
    generator = torch.Generator().manual_seed(2)
    reference, edited = torch.randn(2, 1, 16, 8, 8, generator=generator)
    pairs = pack_module("readout.targets.points").parse_drag_pairs(json.dumps(points))
    fast = relative.correspondence_loss(reference, edited, pairs, image_size)
    floored = relative.correspondence_loss(reference, edited, pairs, image_size, sample=relative.cell_points)
    return fast, floored, reference, edited


def test_official_drag_points_are_floored_to_their_cell():
    on_cells = [{"source": [1, 2], "target": [5, 6]}, {"source": [7, 0], "target": [3, 3]}]
    fast, floored, _, _ = drag_losses(on_cells, (8, 8))
    torch.testing.assert_close(floored, fast, msg="at cell centres bilinear sampling reads the cell itself")
    between = [{"source": [10.5, 21.0], "target": [45.9, 50.2]}, {"source": [60.0, 3.7], "target": [30.1, 33.3]}]
    fast, floored, reference, edited = drag_losses(between, (64, 64))
    assert (fast - floored).abs().max() > 1e-3
    cosine = lambda a, b: (torch.nn.functional.cosine_similarity(a, b, dim=0) + 1) / 2  # noqa: E731
    cells = [((10 // 8, 21 // 8), (45 // 8, 50 // 8)), ((60 // 8, 3 // 8), (30 // 8, 33 // 8))]
    pulled = sum(cosine(reference[0, :, sy, sx], edited[0, :, ty, tx]) for (sx, sy), (tx, ty) in cells) / 2
    ghost = sum(cosine(reference[0, :, sy, sx], edited[0, :, sy, sx]) for (sx, sy), _ in cells) / 2
    torch.testing.assert_close(floored[0], 0.5 * -pulled + 0.5 * ghost)


def test_official_normalizes_the_combined_gradient_once():
    """One target: a fresh Adam step is our first normalized step. Two targets: ours normalizes each (opposite
    signs cancel), the official step normalizes their sum (it moves along the sign of the sum)."""
    official = pack_module("readout.guidance.rules.official")
    rule = pack_module("readout.guidance.run")
    generator = torch.Generator().manual_seed(3)
    first, second = torch.randn(2, 1, 4, 8, 8, generator=generator)
    second = 3 * second
    zero = torch.zeros_like(first)
    torch.testing.assert_close(official.fresh_adam_step(zero, first, 0.02),
                               -0.02 * rule.NormalizedGradient()(first, torch.tensor(True)))
    fast = rule.GuidanceRun.fresh([(0.0, 1.0)] * 2)
    for index, grad in enumerate((first, second)):
        fast.add_direction(index, 1.0, grad)
    disagree = first.sign() != second.sign()
    assert disagree.any()
    assert torch.all(fast.pending[disagree].abs() < 1e-3)
    joint = official.fresh_adam_step(zero, first + second, 0.02)
    torch.testing.assert_close(joint, -0.02 * (first + second).sign(), atol=1e-6, rtol=0)


def test_official_lr_follows_the_largest_weight():
    official = pack_module("readout.guidance.rules.official")
    weight = pack_module("readout.guidance.run").OFFICIAL_WEIGHT
    assert official.learning_rate([weight]) == pytest.approx(2e-2)
    assert official.learning_rate([weight / 2, 2 * weight]) == pytest.approx(4e-2)
    assert list(official.step_window(0.0, 0.5, 100)) == list(range(50))
