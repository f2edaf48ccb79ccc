"""Where a word of the prompt sits in the conditioning: token positions from the CLIP's own tokenizer."""
from __future__ import annotations

from ..backbones.registry import clip_backbone


def clip_family(clip) -> str:
    """The model family whose prompts this CLIP encodes; a ValueError names anything else."""
    return clip_backbone(clip).family


def _tokenizer(clip):
    """The tokenizer of the conditioning's tokens: `clip_l` on SD and SD3 CLIPs, `t5xxl` on Flux's, `qwen3_4b` on
    Z-Image's, `qwen25_7b` on Qwen-Image's, ...: the family says which."""
    key = clip_backbone(clip).prompt_tokenizer_key(clip)
    return getattr(clip.tokenizer, f"clip_{key}", None) or getattr(clip.tokenizer, key)


def _special_tokens(clip) -> set[int]:
    tokenizer = _tokenizer(clip)
    return {token for token in (getattr(tokenizer, name, None) for name in ("start_token", "end_token", "pad_token"))
            if token is not None}


def _token_ids(clip, text: str) -> list[list[int]]:
    """The tokenizer's chunks (77 tokens each, start/end/padding included) as token ids."""
    chunks = clip.tokenize(text)[clip_backbone(clip).prompt_tokenizer_key(clip)]
    return [[int(item[0]) for item in chunk] for chunk in chunks]


def _word_ids(clip, words: str) -> list[list[int]]:
    """The tokens of the words alone, as they may sit in a prompt: without the prompt template a CLIP wraps text in
    (Z-Image's chat template), with special tokens dropped; and also after a space, as byte-level BPE tokenizers (Qwen)
    spell a word that follows one differently."""
    special = _special_tokens(clip)
    variants = []
    for text in (words.strip(), " " + words.strip()):
        chunks = _tokenizer(clip).tokenize_with_weights(text)
        ids = [int(item[0]) for chunk in chunks for item in chunk if int(item[0]) not in special]
        if ids and ids not in variants:
            variants.append(ids)
    return variants


def word_token_positions(clip, prompt: str, words: str) -> tuple[int, ...]:
    """Positions in the encoded prompt of the first occurrence of `words` (one or more words, in order); negative
    where the family's conditioning is counted from its end (Qwen-Image)."""
    clip_family(clip)
    if not words.strip():
        raise ValueError("words: name the word or words of the prompt to guide, e.g. 'cat'")
    variants = _word_ids(clip, words)
    if not variants:
        raise ValueError(f"words: {words!r} has no tokens")
    positions, tokens = [], []
    for index, chunk in enumerate(_token_ids(clip, prompt)):
        for offset, token in enumerate(chunk):
            positions.append(index * len(chunk) + offset)
            tokens.append(token)
    for start in range(len(tokens)):
        for wanted in variants:
            if tokens[start:start + len(wanted)] == wanted:
                return clip_backbone(clip).conditioning_positions(tuple(positions[start:start + len(wanted)]),
                                                                  len(tokens))
    raise ValueError(f"words: {words.strip()!r} is not in the prompt {prompt.strip()!r}: use a word or words of the "
                     "positive prompt text, as it is written")
