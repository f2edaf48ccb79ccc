"""Where a word of the prompt sits in the conditioning: token positions from the CLIP's own tokenizer."""
from __future__ import annotations

TOKENIZER_KEY = "l"
"""SD1.5 and SDXL both tokenize with CLIP-L; SDXL's CLIP-G tokens sit at the same positions."""


def clip_family(clip) -> str:
    """sd15 for a CLIP-L text encoder, sdxl for CLIP-G + CLIP-L; a ValueError names anything else."""
    tokenizer = getattr(clip, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "clip_l"):
        raise ValueError(f"clip: self-guidance needs an SD1.5 or SDXL CLIP (CLIP-L tokenizer); got "
                         f"{type(tokenizer).__name__}")
    return "sdxl" if hasattr(tokenizer, "clip_g") else "sd15"


def _special_tokens(clip) -> set[int]:
    tokenizer = clip.tokenizer.clip_l
    return {token for token in (getattr(tokenizer, name, None) for name in ("start_token", "end_token", "pad_token"))
            if token is not None}


def _token_ids(clip, text: str) -> list[list[int]]:
    """The tokenizer's chunks (77 tokens each, start/end/padding included) as token ids."""
    chunks = clip.tokenize(text)[TOKENIZER_KEY]
    return [[int(item[0]) for item in chunk] for chunk in chunks]


def word_token_positions(clip, prompt: str, words: str) -> tuple[int, ...]:
    """Positions in the encoded prompt of the first occurrence of `words` (one or more words, in order)."""
    clip_family(clip)
    if not words.strip():
        raise ValueError("words: name the word(s) of the prompt to guide, e.g. 'cat'")
    special = _special_tokens(clip)
    wanted = [token for chunk in _token_ids(clip, words) for token in chunk if token not in special]
    if not wanted:
        raise ValueError(f"words: {words!r} has no tokens")
    positions, tokens = [], []
    for index, chunk in enumerate(_token_ids(clip, prompt)):
        for offset, token in enumerate(chunk):
            positions.append(index * len(chunk) + offset)
            tokens.append(token)
    for start in range(len(tokens) - len(wanted) + 1):
        if tokens[start:start + len(wanted)] == wanted:
            return tuple(positions[start:start + len(wanted)])
    raise ValueError(f"words: {words.strip()!r} is not in the prompt {prompt.strip()!r}: use word(s) of the "
                     "positive prompt text, as it is written")
