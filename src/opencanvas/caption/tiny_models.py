"""Tiny BLIP-2 and BLIP captioners with random weights, saved like downloaded ones.

Tests and the CPU benchmark caption through `--model <dir>` exactly as a user
with real weights would; only the sizes differ. The tokenizer is a word-level
`tokenizers` model built from a short vocabulary, so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CAPTION_WORDS = ("a an the of on in with and red green blue yellow white black circle square triangle "
                 "shape picture photo drawing background icon clip art small large").split()


def word_tokenizer(special: Sequence[str], template: str, words: Sequence[str] = CAPTION_WORDS,
                   model_max_length: int | None = None, **special_tokens: str) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer: ids are `special` then `words` in order; `template` e.g. "[CLS] $A [SEP]".

    The one tiny tokenizer builder of the project: the tiny captioners here and the tiny text encoders
    of `opencanvas.sample.tiny` use it. Words split on whitespace and punctuation; unknown ones map to
    `unk_token`. `special_tokens`: bos_token=..., eos_token=..., pad_token=..., unk_token=... (each in `special`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*special, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=special_tokens["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in special if t in template.split()])
    length: dict[str, Any] = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens, **length)


def _save(model_class, config, processor, out_dir: Path, seed: int) -> Path:
    """Random weights from `seed`, saved with the processor the way hub downloads are laid out."""
    import torch

    torch.manual_seed(seed)
    model_class(config).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return Path(out_dir)


def save_tiny_blip2(out_dir: Path, image_size: int = 32, num_query_tokens: int = 4, seed: int = 0) -> Path:
    """A BLIP-2 (ViT + Q-Former + OPT) of a few thousand parameters, saved with its processor."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessorPil,
        OPTConfig,
    )

    # OPT's tokenizer prepends "</s>" as BOS; id 2 as in the real vocabulary.
    tokenizer = word_tokenizer(["<pad>", "<unk>", "</s>"], "</s> $A", bos_token="</s>", eos_token="</s>",
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
    return _save(Blip2ForConditionalGeneration, config, processor, out_dir, seed)


def save_tiny_blip(out_dir: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A BLIP captioning model (ViT + BERT-style decoder) with a BERT-style tokenizer."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[DEC]"]
    tokenizer = word_tokenizer(special, "[CLS] $A [SEP]", bos_token="[DEC]", eos_token="[SEP]", sep_token="[SEP]",
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
    return _save(BlipForConditionalGeneration, config, processor, out_dir, seed)


# A LLaVA-1.5-style chat template: "USER: <image>\n{prompt} ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def save_tiny_llava(out_dir: Path, image_size: int = 28, seed: int = 0) -> Path:
    """A LLaVA (CLIP ViT + Llama) chat model, for the generic `hf` captioner with a prompt."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = word_tokenizer(["<pad>", "<unk>", "<s>", "</s>"], "<s> $A", bos_token="<s>", eos_token="</s>",
                               pad_token="<pad>", unk_token="<unk>")
    tokenizer.add_tokens(["<image>"], special_tokens=True)  # the processor expands it to one per patch
    tokenizer.add_tokens(["USER:", "ASSISTANT:", "describe", "image"])
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                               num_additional_image_tokens=1)  # CLIP's CLS token
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=image_size, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                bos_token_id=2, eos_token_id=3, pad_token_id=0, max_position_embeddings=128),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default")
    return _save(LlavaForConditionalGeneration, config, processor, out_dir, seed)
