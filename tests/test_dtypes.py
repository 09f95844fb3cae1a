"""One dtype table: every stage's --dtype takes the same names (`sample --dtype bf16` included)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.dtypes import DTYPE_NAMES, parse_dtype
from opencanvas.sample.loading import FolderPipeline, load_model
from opencanvas.sample.tiny import write_tiny_folder
from opencanvas.train.pipeline import ModelPipeline


@pytest.mark.parametrize(("names", "dtype"), [(("bf16", "bfloat16", "BF16"), torch.bfloat16),
                                              (("fp16", "float16"), torch.float16),
                                              (("fp32", "float32", " fp32 "), torch.float32)])
def test_short_and_long_names_parse_alike(names, dtype):
    assert {parse_dtype(n, "cpu") for n in names} == {dtype}


def test_auto_follows_the_device_and_unknown_names_say_which_exist():
    assert parse_dtype("auto", "cpu") == torch.float32
    assert parse_dtype("auto", "cuda") == torch.bfloat16 and parse_dtype("auto", torch.device("cuda", 1))
    assert set(DTYPE_NAMES) >= {"auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"}
    with pytest.raises(ValueError, match="unknown dtype 'half'.*bf16/bfloat16"):
        parse_dtype("half")


def test_every_stage_rejects_an_unknown_dtype_with_the_same_names(tmp_path: Path):
    runner = CliRunner()
    verbs = (["sample", "--pipeline", str(tmp_path), "x", "--out", str(tmp_path / "out")],
             ["caption", "--subset", "s", "--captioner", "metadata"],
             ["encode", "--subset", "s", "--autoencoder", "a", "--text-encoder", "t", "--captioners", "metadata",
              "--name", "n"])
    for verb in verbs:
        result = runner.invoke(app, [*verb, "--dtype", "half", "-w", str(tmp_path / "ws")], env={"COLUMNS": "250"})
        assert result.exit_code != 0 and "bf16/bfloat16" in result.output, (verb, result.output)


def test_sample_dtype_bf16_loads_a_common_pipeline_type(tmp_path: Path):
    folder = write_tiny_folder(tmp_path / "tiny")
    model = load_model(None, None, folder, dtype="bf16")
    assert isinstance(model, FolderPipeline) and isinstance(model, ModelPipeline)
    assert next(model.denoiser.parameters()).dtype == torch.bfloat16
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sample", "--pipeline", str(folder), "a red circle", "--steps", "2",
                                      "--dtype", "bf16", "--out", str(out), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("0*.png"))) == 1
