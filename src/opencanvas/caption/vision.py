"""Model captioners: BLIP-2 (the paper's choice), BLIP, and any transformers image-to-text model.

Each is a thin adapter over one `ModelCaptioner`: the processor builds the
prompt once, images arrive already decoded, cropped and (for fixed-size
processors) normalised by the background loader, and `generate` runs batched
under `torch.inference_mode` in bf16/fp16 on GPU with SDPA attention.

Weights load from a local directory (offline) or a hub id (where the hub is
reachable); the revision recorded on each row is the hub commit, or the
sha256 of the weight files when no commit is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opencanvas.caption.captioners import CaptionInput, GenerationSettings, Provenance, degeneracy
from opencanvas.dtypes import parse_dtype
from opencanvas.storage import weights_sha256

if TYPE_CHECKING:  # heavy imports stay inside functions (fast CLI start)
    import torch


class CaptionModelError(RuntimeError):
    """The captioner model cannot be found or loaded; the message says how to provide it."""


def weights_revision(model_dir: Path) -> str:
    """"sha256:<hex>" over the weight files of a local model dir (`storage.weights_sha256`)."""
    digest = weights_sha256(model_dir)
    if digest is None:
        raise CaptionModelError(f"no weight files (*.safetensors, *.bin) in {model_dir}: is it a model directory?")
    return "sha256:" + digest


def resolve_model(model: str) -> tuple[str, bool]:
    """(source, is_local): a local directory, or a hub id to try on the hub."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), True
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or path.suffix != ""
    if looks_like_path or path.exists():
        raise CaptionModelError(
            f"model directory {model!r} does not exist. Download the weights, e.g. "
            f"`huggingface-cli download Salesforce/blip2-opt-2.7b --local-dir {model}`, or pass --model DIR.")
    return model, False


def _missing_model_message(model: str, error: Exception) -> str:
    local = f"models/{model.rsplit('/', 1)[-1]}"
    return (f"cannot load captioner model {model!r} ({type(error).__name__}: {str(error).splitlines()[0]}). "
            f"This machine may not reach the Hugging Face hub: download the weights where it is reachable with "
            f"`huggingface-cli download {model} --local-dir {local}`, copy the folder here and pass "
            f"--model {local}.")


def load_pretrained(model_class: Any, source: str, dtype: torch.dtype) -> Any:
    """`from_pretrained` with SDPA attention where the architecture supports it."""
    try:
        return model_class.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    except ValueError as e:  # architecture without SDPA: fall back to its default attention
        if "sdpa" not in str(e).lower() and "attention" not in str(e).lower():
            raise
        return model_class.from_pretrained(source, dtype=dtype)


@dataclass(frozen=True)
class PromptTemplate:
    """Token ids every image's generation starts from (image placeholders + prompt)."""

    input_ids: torch.Tensor       # (1, L)
    attention_mask: torch.Tensor  # (1, L)
    echoed_tokens: int              # leading tokens `generate` returns before the new ones


class ModelCaptioner:
    """A transformers vision-language model behind the `Captioner` interface."""

    needs_pixels = True

    def __init__(self, name: str, model: Any, processor: Any, *, model_id: str, revision: str,
                 prompt: str, generation: GenerationSettings, preprocessing: str, fixed_size: bool) -> None:
        self.name = name
        self.model = model
        self.processor = processor
        self.generation = generation
        self.prompt = prompt
        # Fixed-size processors (BLIP, BLIP-2) run in loader workers; others get PIL images here.
        self.image_processor = processor.image_processor if fixed_size else None
        self.provenance = Provenance(model_id=model_id, model_revision=revision, prompt=prompt,
                                     generation=generation.to_json(), preprocessing=preprocessing)
        self._template: PromptTemplate | None = self._prompt_template() if fixed_size else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _prompt_text(self) -> str:
        """The prompt, wrapped in the processor's chat template when it has one (LLaVA-style models)."""
        if self.prompt and getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.prompt

    def _prompt_template(self) -> PromptTemplate:
        from PIL import Image

        # One call of the real processor lays out image placeholder tokens + prompt for us.
        enc = self.processor(images=[Image.new("RGB", (8, 8))], text=[self._prompt_text()], return_tensors="pt")
        ids = enc["input_ids"]
        return PromptTemplate(ids, enc.get("attention_mask", ids.new_ones(ids.shape)), self._echoed(ids.shape[1]))

    def _echoed(self, prompt_len: int) -> int:
        """How many prompt tokens `generate` returns ahead of the caption."""
        config = self.model.config
        if getattr(config, "is_encoder_decoder", False):
            return 0
        return prompt_len

    def inputs(self, pixels: Any) -> tuple[dict[str, Any], int]:
        """Model inputs for one batch and the number of prompt tokens `generate` will echo.

        `pixels`: (B, 3, H, W) float from the loader's image processor, or a list of PIL images.
        """
        if self._template is None:
            # Same prompt for every image, so no padding: positions line up for batched decoding.
            enc = self.processor(images=list(pixels), text=[self._prompt_text()] * len(pixels),
                                 return_tensors="pt", padding=True)
            moved = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                     for k, v in enc.items()}
            return moved, self._echoed(enc["input_ids"].shape[1])
        batch = pixels.shape[0]
        return {"pixel_values": pixels.to(self.device, self.dtype, non_blocking=True),
                "input_ids": self._template.input_ids.repeat(batch, 1).to(self.device),    # (B, L)
                "attention_mask": self._template.attention_mask.repeat(batch, 1).to(self.device),
                }, self._template.echoed_tokens

    def caption(self, items: Sequence[CaptionInput], pixels: Any = None) -> list[tuple[str, str]]:
        import torch

        inputs, echoed = self.inputs(pixels)
        with torch.inference_mode():
            sequences = self.model.generate(**inputs, **self.generation.generate_kwargs())  # (B, echoed + new)
        texts = self.processor.batch_decode(sequences[:, echoed:], skip_special_tokens=True)
        texts = [" ".join(t.split()) for t in texts]
        return [(t, degeneracy(t)) for t in texts]


class BlipCaptioner(ModelCaptioner):
    """BLIP's text decoder returns its BOS + prompt (without the final [SEP]) before the caption."""

    def _echoed(self, prompt_len: int) -> int:
        return prompt_len - 1


def load_model_captioner(kind: str, model: str, *, name: str, device: str, dtype: str, prompt: str,
                         generation: GenerationSettings, preprocessing: str,
                         revision: str | None = None) -> ModelCaptioner:
    """Load `kind` ("blip2" | "blip" | "hf") from a local dir or hub id onto `device`."""
    import transformers

    source, is_local = resolve_model(model)
    classes = {"blip2": transformers.Blip2ForConditionalGeneration,
               "blip": transformers.BlipForConditionalGeneration,
               "hf": transformers.AutoModelForImageTextToText}
    if kind not in classes:
        raise ValueError(f"unknown model captioner {kind!r}: use one of {sorted(classes)}")
    try:
        processor = transformers.AutoProcessor.from_pretrained(source)
        # auto: bf16 on CUDA (what the BLIP-2 weights were trained in), fp32 on CPU.
        net = load_pretrained(classes[kind], source, parse_dtype(dtype, device))
    except OSError as e:
        raise CaptionModelError(_missing_model_message(model, e)) from e
    net = net.to(device).eval()
    if kind == "blip2" and getattr(processor, "num_query_tokens", None) is None:
        # Older saved processors lack it; the image placeholders must match the Q-Former queries.
        processor.num_query_tokens = net.config.num_query_tokens
    if revision is None:
        revision = weights_revision(Path(source)) if is_local else (
            getattr(net.config, "_commit_hash", None) or "unknown")
    cls = BlipCaptioner if kind == "blip" else ModelCaptioner
    return cls(name, net, processor, model_id=model if not is_local else source, revision=revision,
               prompt=prompt, generation=generation, preprocessing=preprocessing,
               fixed_size=kind in ("blip2", "blip"))
