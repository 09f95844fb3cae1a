"""Tiny BLIP-2 and BLIP captioners with random weights, saved like downloaded ones.

Tests and the CPU benchmark caption through `--model <dir>` exactly as a user
with real weights would; only the sizes differ. The tokenizer is a word-level
`tokenizers` model built from a short vocabulary, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

CAPTION_WORDS = ("a an the of on in with and red green blue yellow white black circle square triangle "
                 "shape picture photo drawing background icon clip art small large").split()


def tiny_tokenizer(special: list[str], template: str, **special_tokens: str):
    """A word-level fast tokenizer over CAPTION_WORDS; `template` e.g. "[CLS] $A [SEP]".

    `special_tokens`: bos_token=..., eos_token=..., pad_token=..., unk_token=... (each in `special`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*special, *CAPTION_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=special_tokens["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in special if t in template.split()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)


def save_tiny_blip2(out_dir: Path, image_size: int = 32, num_query_tokens: int = 4, seed: int = 0) -> Path:
    """A BLIP-2 (ViT + Q-Former + OPT) of a few thousand parameters, saved with its processor."""
    import torch
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor,
                              BlipImageProcessorPil, OPTConfig)

    # OPT's tokenizer prepends "</s>" as BOS; id 2 as in the real vocabulary.
    tokenizer = tiny_tokenizer(["<pad>", "<unk>", "</s>"], "</s> $A", bos_token="</s>", eos_token="</s>",
                               pad_token="<pad>", unk_token="<unk>")
    processor = Blip2Processor(BlipImageProcessorPil(size={"height": image_size, "width": image_size}),
                               tokenizer, num_query_tokens=num_query_tokens)
    vocab = len(processor.tokenizer)  # includes the "<image>" placeholder the processor added
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            vocab_size=vocab),
        text_config=OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                              num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                              bos_token_id=2, eos_token_id=2, pad_token_id=0,
                              tie_word_embeddings=False),  # tied: echoes BOS = EOS at once
        num_query_tokens=num_query_tokens,
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return Path(out_dir)


def save_tiny_blip(out_dir: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A BLIP captioning model (ViT + BERT-style decoder) with a BERT-style tokenizer."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[DEC]"]
    tokenizer = tiny_tokenizer(special, "[CLS] $A [SEP]", bos_token="[DEC]", eos_token="[SEP]", sep_token="[SEP]",
                               cls_token="[CLS]", pad_token="[PAD]", unk_token="[UNK]")
    processor = BlipProcessor(BlipImageProcessorPil(size={"height": image_size, "width": image_size}), tokenizer)
    vocab = len(processor.tokenizer)
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64,
                         bos_token_id=special.index("[DEC]"), sep_token_id=special.index("[SEP]"),
                         eos_token_id=special.index("[SEP]"), pad_token_id=0),
        projection_dim=32)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return Path(out_dir)
