"""Model dtypes by name: the one table every stage's `--dtype` goes through.

torch is imported only when a name is parsed, so CLI modules can list the names
without paying for torch at `--help`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# name -> torch attribute; short and long spellings of each.
_TABLE = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}
DTYPE_NAMES: tuple[str, ...] = ("auto", *_TABLE)
DTYPE_HELP = "auto (bf16 on CUDA, fp32 elsewhere), bf16/bfloat16, fp16/float16 or fp32/float32"


def check_dtype_name(name: str) -> str:
    """The name, lower-cased, if it is one of DTYPE_NAMES; else ValueError saying which are."""
    key = name.strip().lower()
    if key not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}: use {DTYPE_HELP}")
    return key


def parse_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """bf16/bfloat16, fp16/float16, fp32/float32, or auto: bf16 on CUDA (what large models are trained and
    served in), fp32 on a CPU (where bf16 matmuls are emulated and slower)."""
    import torch

    key = check_dtype_name(name)
    if key == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, _TABLE[key])
