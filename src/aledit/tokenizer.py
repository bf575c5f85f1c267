"""The real CLIP BPE tokenizer, built offline from the vocabulary shipped with aledit.

``assets/clip_bpe/bpe_simple_vocab_16e6.txt.gz`` is OpenAI CLIP's byte-pair vocabulary as
distributed in the ``open_clip_torch`` wheel (MIT, see ``LICENSE-open_clip`` beside it). Token
ids equal those of ``openai/clip-vit-large-patch14``'s tokenizer (49406 = BOS, 49407 = EOS/pad).
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources

__all__ = ["clip_tokenizer"]

_VOCAB = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2


def _byte_symbols() -> list[str]:
    # GPT-2 / CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256+.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    data = resources.files("aledit").joinpath("assets", "clip_bpe", _VOCAB).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    symbols = _byte_symbols()
    words = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    return {w: i for i, w in enumerate(words)}, merges


def clip_tokenizer(model_max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` with CLIP's real vocabulary (no download)."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
