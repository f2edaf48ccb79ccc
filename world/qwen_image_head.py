"""`python -m world.qwen_image_head <readout.train's options>`: the pack's head trainer on the world's Qwen-Image,
which reads the world's CLIP-L padded to Qwen-Image's 3584-wide text and Wan 2.1 latents of the world's TAESD16
(no text encoder or VAE of those formats loads at the world's size)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import readout.train.__main__ as cli
    from world.qwen_image import WanLatentVAE, pad_text

    class WorldQwenImage(cli.FrozenUNet):
        """The frozen world Qwen-Image with its padded empty prompt and Wan-latent encoder."""

        def __init__(self, model_patcher, vae, clip) -> None:
            super().__init__(model_patcher, WanLatentVAE(vae), clip)
            self.conditioning = [[pad_text(tokens), extra] for tokens, extra in self.conditioning]

    cli.FrozenUNet = WorldQwenImage
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
