"""Convert an official readout head `.pt` to our `.safetensors`: `python -m readout.heads.convert in.pt out.safetensors`."""
from __future__ import annotations

import argparse
from typing import Sequence

from .files import HeadFileError, load_head_file, save_head_safetensors
from .architecture import HEAD_KINDS


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, convert, and print what the head reads out; exit with a message on a bad file."""
    parser = argparse.ArgumentParser(prog="python -m readout.heads.convert", description=__doc__)
    parser.add_argument("source", help="official readout head (.pt), read without executing pickled code")
    parser.add_argument("target", help="output path (.safetensors)")
    parser.add_argument("--kind", choices=HEAD_KINDS, help="head kind, for files that do not say what they read out")
    args = parser.parse_args(argv)
    if not args.target.lower().endswith(".safetensors"):
        parser.error("the output path must end in .safetensors")
    try:
        config, state_dict = load_head_file(args.source, kind=args.kind)
        save_head_safetensors(args.target, config, state_dict)
    except HeadFileError as error:
        raise SystemExit(f"error: {error}") from error
    print(f"kind: {config.kind}, family: {config.family}, layers: {config.num_layers} -> {args.target}")


if __name__ == "__main__":
    main()
