"""Context-free token states: each word piece's state from its word encoded alone.

A bidirectional encoder mixes every word into every other's state: in all-MiniLM-L6-v2 the state of "purple"
before "triangle" is not the state of "purple" before "circle". A network that never saw a purple triangle then
meets a new vector at both words. Encoding each word alone ([CLS] word [SEP]) gives every word one state in
every caption, so what the network learned of "purple" and of "triangle" apart is what it reads in the new pair
(docs/models.md, "Unseen combinations"). The token layout is the caption's own (the same positions, special
tokens and padding), so token offsets, masks and layout guidance read word states as they read caption states.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

SPEC_SUFFIX = ":words"  # text_encoder="minilm:words": the encoder's word states instead of its caption states


def split_spec(spec: str) -> tuple[str, bool]:
    """An encoder spec without its ``:words`` suffix, and whether it had one."""
    return (spec[:-len(SPEC_SUFFIX)], True) if spec.endswith(SPEC_SUFFIX) else (spec, False)


def special_layout(empty_ids: list[int], word_ids: list[int], empty_count: int) -> tuple[int, int]:
    """(special tokens before the words, special tokens in all) from the encodings of "" and of one word:
    BERT's [CLS] ... [SEP] gives (1, 2), T5's ... </s> gives (0, 1)."""
    lead = 0
    while lead < min(len(empty_ids), len(word_ids)) and empty_ids[lead] == word_ids[lead] and lead < empty_count - 1:
        lead += 1
    return lead, empty_count


def context_free_states(texts: list[str], mask: torch.Tensor, empty: torch.Tensor,
                        encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
                        cache: dict[str, torch.Tensor], lead: int, n_special: int) -> torch.Tensor:
    """[B, L, D] states of ``texts`` (already prepared: lower case or cleaned) laid out as their own tokens
    (``mask``: [B, L], their attention mask). Word piece positions take the piece's state from ``encode([word])``;
    special tokens and padding take the empty caption's states at the same position (``empty``: [1, L, D]).
    ``cache`` keeps each word's piece states across calls (a caption table has few distinct words)."""
    new = sorted({w for t in texts for w in t.split()} - cache.keys())
    if new:
        states, word_mask = encode(new)
        for i, w in enumerate(new):
            n = int(word_mask[i].sum()) - n_special
            cache[w] = states[i, lead:lead + n].float().cpu()
    out = empty.float().expand(len(texts), -1, -1).clone()
    for b, t in enumerate(texts):
        words = t.split()
        if not words:
            continue
        pieces = torch.cat([cache[w] for w in words])
        n = min(len(pieces), int(mask[b].sum()) - n_special)  # a truncated caption keeps its first pieces
        out[b, lead:lead + n] = pieces[:n].to(out.device)
    return out
