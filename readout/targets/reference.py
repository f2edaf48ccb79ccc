"""Reference branches for relative targets: generated in the same batch, or a real image brought back by inversion."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InvertedReference:
    """A real image's latent trajectory from DDIM inversion: k-diffusion latents at the sampler's sigmas."""

    sigmas: torch.Tensor
    latents: torch.Tensor
    source_latent: torch.Tensor
    image: torch.Tensor
    steps: int
    scheduler: str

    @property
    def start_latent(self) -> torch.Tensor:
        """The latent at the first (largest) sigma: where the edited branch starts for a reconstruction."""
        return self.latents[0]

    def latent_at(self, sigma: float) -> torch.Tensor:
        """The reference latent at a sigma, linearly interpolated between the inverted steps."""
        sigmas = self.sigmas.float()
        if sigma >= float(sigmas[0]):
            return self.latents[0]
        if sigma <= float(sigmas[-1]):
            return self.latents[-1]
        upper = int((sigmas >= sigma).nonzero().max())
        high, low = float(sigmas[upper]), float(sigmas[upper + 1])
        blend = (high - sigma) / (high - low) if high != low else 0.0
        return torch.lerp(self.latents[upper], self.latents[upper + 1], blend)

    def check_latent_size(self, latent_size: tuple[int, int], latent_scale: int) -> None:
        """Refuse a sampler latent of another size than the inverted image's (`latent_scale` px a cell): the edit
        starts from the image's noise and is compared with it cell by cell."""
        rows, cols = self.start_latent.shape[-2:]
        if (rows, cols) != tuple(latent_size):
            height, width = self.image.shape[1], self.image.shape[2]
            raise ValueError(
                f"reference: the image was inverted at {width}x{height} px (a {cols}x{rows} latent) but latent_image "
                f"is {latent_size[1]}x{latent_size[0]} ({latent_size[1] * latent_scale}x"
                f"{latent_size[0] * latent_scale} px); sample at the image's size (VAE Encode the same image, or an "
                "Empty Latent Image of its size), or scale the image to the latent's size before Readout Invert Image")

    def check_schedule(self, sigmas: torch.Tensor, steps: int, scheduler: str) -> None:
        """Refuse a sampler schedule other than the one the image was inverted with."""
        if sigmas.shape != self.sigmas.shape or not torch.allclose(sigmas.float().cpu(), self.sigmas.float().cpu()):
            raise ValueError(
                f"reference: the image was inverted with {self.steps} steps of the {self.scheduler!r} scheduler; "
                f"set the sampler to the same steps and scheduler (got {steps} steps of {scheduler!r}, denoise 1.0)"
            )
