"""Marked outputs: `sample` writes XMP (IPTC trainedAlgorithmicMedia) and, with a certificate, a signed
C2PA manifest; `verify` reads them back, catches tampering and cross-checks weights against a run."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.marking.certificates import load_credentials, make_test_cert
from opencanvas.marking.manifest import read_manifest
from opencanvas.marking.marker import Marker, encode_marked, use_marker
from opencanvas.marking.xmp import TRAINED_ALGORITHMIC_MEDIA, read_xmp_fields
from opencanvas.sample.tiny import write_tiny_folder
from opencanvas.train.checkpoint import TrainState, save_checkpoint, tensors_hash
from opencanvas.workspace import Workspace

PROVENANCE = {"run": "tiny-run", "weights_sha256": "f" * 64,
              "config": {"data": {"policy": "commercial", "catalog_hash": "cafe01"}}}
META = {"model": "r", "weights_hash": "ab" * 32, "prompt": "a red circle", "negative_prompt": "", "seed": 3,
        "license_policy": "commercial", "catalog_hash": "cafe01"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_folder(tmp_path_factory.mktemp("model") / "tiny", provenance=PROVENANCE)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_test_cert(tmp_path_factory.mktemp("cert"))


def _sample(folder: Path, out: Path, *extra: str) -> str:
    r = CliRunner().invoke(app, ["sample", "--pipeline", str(folder), "a red circle", "--steps", "2", "-n", "2",
                                 "--out", str(out), "-w", str(out.parent / "ws"), *extra])
    assert r.exit_code == 0, r.output
    return r.output


def _verify(*args: str) -> tuple[int, list[dict]]:
    r = CliRunner().invoke(app, ["verify", "--json", *args])
    return r.exit_code, json.loads(r.output)


def test_signed_samples_verify(folder: Path, cert: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    output = _sample(folder, out, "--c2pa-cert", str(cert[0]), "--c2pa-key", str(cert[1]))
    assert "no C2PA manifest" not in output
    pngs = sorted(out.glob("0*.png"))
    code, verdicts = _verify(*map(str, pngs), "-w", str(tmp_path / "ws"))
    assert code == 0, verdicts
    v = verdicts[0]
    assert v["valid"] and v["manifest"]["present"] and v["manifest"]["valid"] and not v["manifest"]["trusted"]
    assert v["manifest"]["signer"] == "OpenCanvas local test signer"
    assert v["manifest"]["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert v["manifest"]["generation"] == {"run": "tiny-run", "weights_sha256": "f" * 64, "catalog_hash": "cafe01",
                                           "license_policy": "commercial", "prompt": "a red circle",
                                           "negative_prompt": "", "seed": 0}
    assert v["xmp"] == {"digital_source_type": TRAINED_ALGORITHMIC_MEDIA, "model": "tiny-run",
                        "weights_sha256": "f" * 64}
    r = CliRunner().invoke(app, ["verify", str(pngs[1])])
    assert r.exit_code == 0 and "valid, signed by OpenCanvas local test signer" in r.output


def test_omit_prompt_and_unsigned_samples(folder: Path, cert: tuple[Path, Path], tmp_path: Path) -> None:
    _sample(folder, tmp_path / "a", "--c2pa-cert", str(cert[0]), "--c2pa-key", str(cert[1]), "--c2pa-omit-prompt")
    _, [v] = _verify(str(tmp_path / "a" / "00000-s0.png"))
    assert "prompt" not in v["manifest"]["generation"] and "seed" not in v["manifest"]["generation"]
    assert v["manifest"]["generation"]["weights_sha256"] == "f" * 64
    output = _sample(folder, tmp_path / "b")
    assert "no C2PA manifest" in output and "make-test-cert" in output  # the notice says how to add C2PA
    code, [v] = _verify(str(tmp_path / "b" / "00000-s0.png"))
    assert code == 1 and not v["valid"] and v["reasons"] == ["no C2PA manifest"]
    assert v["xmp"]["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA  # XMP without a certificate too


def test_tampered_pixels_are_not_valid(folder: Path, cert: tuple[Path, Path], tmp_path: Path) -> None:
    _sample(folder, tmp_path / "o", "--c2pa-cert", str(cert[0]), "--c2pa-key", str(cert[1]))
    path = tmp_path / "o" / "00000-s0.png"
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF  # one byte of compressed pixels; the manifest and all chunks stay
    path.write_bytes(bytes(data))
    r = CliRunner().invoke(app, ["verify", str(path)])
    assert r.exit_code == 1 and "not valid" in r.output and "dataHash.mismatch" in r.output


def test_config_file_signing_and_bad_credentials_fail_before_any_image(folder: Path, cert: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    other = make_test_cert(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    expired = make_test_cert(tmp_path / "expired", days=1, start=dt.datetime.now(dt.UTC) - dt.timedelta(days=9))
    cases = [((cert[0], other[1]), "does not match the certificate"), ((garbage, cert[1]), "not a PEM certificate"),
             ((expired[0], expired[1]), "expired on"), ((tmp_path / "none.pem", cert[1]), "not found")]
    for (c, k), message in cases:
        out = tmp_path / "never"
        r = CliRunner().invoke(app, ["sample", "--pipeline", str(folder), "x", "--steps", "1", "--out", str(out),
                                     "--c2pa-cert", str(c), "--c2pa-key", str(k), "-w", str(tmp_path / "ws")])
        assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
        assert not out.exists()
    ws = tmp_path / "ws2"
    ws.mkdir()
    (ws / "opencanvas.toml").write_text(f'[c2pa]\ncert = "{cert[0]}"\nkey = "{cert[1]}"\n')
    out = tmp_path / "cfg"
    r = CliRunner().invoke(app, ["sample", "--pipeline", str(folder), "x", "--steps", "1", "--out", str(out),
                                 "-w", str(ws)])
    assert r.exit_code == 0, r.output
    assert read_manifest((out / "00000-s0.png").read_bytes()).valid


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_every_format_carries_xmp_and_c2pa(cert: tuple[Path, Path], fmt: str) -> None:
    with use_marker(Marker(load_credentials(*cert))):
        data = encode_marked(Image.new("RGB", (64, 64), "red"), META, fmt)
    check = read_manifest(data)
    assert check.valid and check.generation["prompt"] == "a red circle"
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == fmt.upper()
        assert read_xmp_fields(img.info.get("xmp"))["weights_sha256"] == "ab" * 32


def test_verify_cross_checks_weights_against_the_workspace_run(cert: tuple[Path, Path], tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    model, ema = {"w": torch.ones(3)}, {"w": torch.full((3,), 0.5)}
    save_checkpoint(ws.run_dir("r"), {}, TrainState(images_seen=8), model, ema, {"state": {}, "param_groups": []})
    paths = []
    for name, weights in (("ok", tensors_hash(ema)), ("forged", "0" * 64)):
        with use_marker(Marker(load_credentials(*cert))):
            data = encode_marked(Image.new("RGB", (32, 32)), META | {"weights_hash": weights}, "png")
        paths.append(tmp_path / f"{name}.png")
        paths[-1].write_bytes(data)
    code, [ok, forged] = _verify(*map(str, paths), "-w", str(ws.root))
    assert code == 1
    assert ok["valid"] and ok["workspace"]["matches"] is True
    assert not forged["valid"] and forged["workspace"]["matches"] is False
    assert "match no checkpoint of run 'r'" in forged["reasons"][0]


def test_make_test_cert_command(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["c2pa", "make-test-cert", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    creds = load_credentials(tmp_path / "c2pa-cert.pem", tmp_path / "c2pa-key.pem")
    assert creds.alg == "es256" and "OpenCanvas local test signer" in creds.signer


def test_eval_images_are_marked(folder: Path, cert: tuple[Path, Path], tmp_path: Path) -> None:
    from opencanvas.sample.tiny import write_tiny_clip
    from tests.factories import make_image_subset

    ws = Workspace.open(tmp_path / "ws")
    make_image_subset(ws, "shapes", n=8, size=16, shard_size=8)
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    r = CliRunner().invoke(app, ["eval", "--pipeline", str(folder), "--prompts", str(tmp_path / "p.txt"),
                                 "--reference", "shapes", "--metrics", "clip", "--guidance", "3", "-n", "2",
                                 "--steps", "1", "--clip", str(write_tiny_clip(tmp_path / "clip")),
                                 "--c2pa-cert", str(cert[0]), "--c2pa-key", str(cert[1]), "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    images = sorted(ws.run_dir(folder.name).glob("eval/*/g*/*.png"))
    assert len(images) == 4  # guidance 0 (the unconditional baseline) and 3, two images each
    code, verdicts = _verify(*map(str, images))
    assert code == 0 and all(v["manifest"]["generation"]["weights_sha256"] == "f" * 64 for v in verdicts)


def test_web_app_images_are_marked(cert: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    """`opencanvas serve --c2pa-cert/--c2pa-key` marks process-wide: generation runs in a worker thread."""
    import re
    import time

    from fastapi.testclient import TestClient

    from opencanvas.marking.marker import set_process_marker
    from opencanvas.web.app import WebConfig, create_app
    from opencanvas.web.security import Secrets
    from tests.web_workspace import shared_web_workspace

    ws, clip = shared_web_workspace(tmp_path_factory)
    set_process_marker(Marker(load_credentials(*cert)))
    try:
        client = TestClient(create_app(WebConfig(ws=ws, host="127.0.0.1", clip=str(clip), secrets=Secrets())),
                            base_url="http://127.0.0.1:8000")
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/generate").text).group(1)  # type: ignore[union-attr]
        job = client.post("/api/generate", headers={"x-csrf-token": csrf},
                          json={"run": "tiny-a", "prompt": "a blue square", "steps": 2, "seed": 11, "guidance": 3})
        assert job.status_code == 200, job.text
        for _ in range(600):
            state = client.get(f"/api/generate/{job.json()['id']}").json()
            if state["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert state["status"] == "done", state["error"]
        check = read_manifest(client.get(state["image_url"]).content)
    finally:
        set_process_marker(None)
    assert check.valid and check.generation["prompt"] == "a blue square" and check.generation["run"] == "tiny-a"


@pytest.mark.parametrize("fmt,suffix", [("jpeg", "jpg"), ("webp", "webp")])
def test_sample_format_jpeg_webp_is_marked_and_resumes(folder: Path, cert: tuple[Path, Path], tmp_path: Path,
                                                       fmt: str, suffix: str) -> None:
    from opencanvas.sample.pngmeta import read_image_meta

    out = tmp_path / "o"
    signing = ["--c2pa-cert", str(cert[0]), "--c2pa-key", str(cert[1]), "--format", fmt]
    _sample(folder, out, *signing)
    images = sorted(out.glob(f"0*.{suffix}"))
    assert [p.name for p in images] == [f"00000-s0.{suffix}", f"00001-s1.{suffix}"]
    code, verdicts = _verify(*map(str, images))
    assert code == 0 and verdicts[1]["xmp"]["weights_sha256"] == "f" * 64
    assert read_image_meta(images[1])["seed"] == 1 and read_image_meta(images[1])["prompt"] == "a red circle"
    before = [p.stat().st_mtime_ns for p in images]
    _sample(folder, out, *signing)  # same command: every image found done, none rewritten
    assert [p.stat().st_mtime_ns for p in images] == before
    r = CliRunner().invoke(app, ["sample", "--pipeline", str(folder), "x", "--out", str(tmp_path / "n"),
                                 "--format", "gif", "-w", str(tmp_path / "ws")])
    assert r.exit_code == 2 and "unknown --format" in r.output


def test_xmp_round_trips_awkward_text() -> None:
    from opencanvas.marking.xmp import xmp_packet

    meta = {"model": 'run "a" <b> & c', "weights_hash": "ab" * 32, "prompt": "line one\nline 'two'\t\"3\" & <4>"}
    fields = read_xmp_fields(xmp_packet(meta, with_generation=True))
    assert fields["model"] == meta["model"] and json.loads(fields["generation"]) == meta
    assert fields["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA


def test_verify_an_unmarked_image(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    code, [v] = _verify(str(path))
    assert code == 1 and v["reasons"] == ["no C2PA manifest", "no XMP Iptc4xmpExt:DigitalSourceType "
                                          "trainedAlgorithmicMedia"]
    r = CliRunner().invoke(app, ["verify", str(path)])
    assert r.exit_code == 1 and "not valid" in r.output and "C2PA manifest: absent" in r.output
