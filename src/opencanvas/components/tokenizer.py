"""A CLIP-style tokenizer trained on the catalog's captions (no downloaded vocabulary).

BPE over lower-cased, NFKC-normalised words, wrapped as a transformers fast
tokenizer with CLIP's special tokens, so `AutoTokenizer.from_pretrained(dir)`
loads it anywhere. Ids: pad 0, unk 1, bos 2, eos 3. The text tower pools at the
first eos; its config must say `eos_token_id=3` (2 selects a legacy argmax rule).
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


def train_caption_tokenizer(captions: Iterable[str], vocab_size: int = 4096,
                            max_length: int = 77, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on `captions`; the alphabet always covers printable ASCII."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation), show_progress=False)
    tok.train_from_iterator(captions, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=max_length)
