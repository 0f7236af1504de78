"""Tests of scripts.inferers: AutocastInferer (float32 heatmaps out, autocast inside, plain fp32 when
disabled) and the ONNX Runtime backend of folder inference against PyTorch eager.

For the ONNX tests the network is the tiny SCN of the tests (``SMALL``, random weights) plus fixed
Gaussian peaks, so that the decoded points are well defined and the comparison measures the backends,
not a flat heatmap's argmax; it is exported with :func:`scripts.inferers.export_onnx` (real ONNX, run by
the real ``onnxruntime``) and both backends run through ``configs/inference.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from scripts.heatmap import gaussian_heatmaps
from scripts.checkpoints import load_weights
from scripts.inferers import AutocastInferer, OnnxRuntimeInferer, export_onnx
from scripts.networks.scn import SpatialConfigurationNet
from scripts.writers import output_path
from tests.helpers import BUNDLE_ROOT, SMALL, tiny_checkpoint, write_dicom
from tests.test_inference import radiograph, workflow

pytest.importorskip("onnxruntime")

class _DtypeProbe(torch.nn.Module):
    """A convolution that records the dtype it computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.seen: list[torch.dtype] = []

    def forward(self, x):
        out = self.conv(x)
        self.seen.append(out.dtype)
        return out


def test_autocast_runs_in_bf16_and_returns_float32():
    probe = _DtypeProbe()
    x = torch.randn(2, 1, 8, 8)
    out = AutocastInferer("cpu", "bfloat16", enabled=True)(x, probe)
    assert probe.seen == [torch.bfloat16] and out.dtype == torch.float32
    torch.testing.assert_close(out, probe.conv(x), atol=0.05, rtol=0.05)


def test_disabled_inferer_equals_the_plain_network():
    torch.manual_seed(0)
    net = SpatialConfigurationNet(in_channels=1, num_landmarks=3, num_filters=4).eval()
    x = torch.randn(1, 1, 32, 32)
    inferer = AutocastInferer(device_type="cpu:0", enabled=False)
    assert inferer.device_type == "cpu"
    with torch.no_grad():
        torch.testing.assert_close(inferer(x, net), net(x), atol=0, rtol=0)


NUM_LANDMARKS = 37


class PeakedNet(torch.nn.Module):
    """``network`` plus Gaussian peaks (height 100) at fixed points whose height depends on the input."""

    def __init__(self, network: torch.nn.Module, points_net: np.ndarray, hw=(32, 32)) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("peaks", gaussian_heatmaps(torch.as_tensor(points_net, dtype=torch.float32), hw, 1.5, 100.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) + self.peaks * (1.0 + 0.1 * torch.tanh(x.mean(dim=(1, 2, 3))))[:, None, None, None]


@pytest.fixture(scope="module")
def peaked_net(tmp_path_factory) -> PeakedNet:
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "inference.json"))
    for key, value in SMALL.items():
        parser[key] = value
    rng = np.random.default_rng(3)
    points = rng.uniform(3.0, 28.0, size=(NUM_LANDMARKS, 2))
    return PeakedNet(load_weights(parser.get_parsed_content("network_def"), ckpt), points).eval()


def _folder(root: Path) -> Path:
    root.mkdir()
    for k in range(5):
        Image.fromarray(radiograph((60 + 7 * k, 50 + 3 * k), seed=k)).save(root / f"img{k}.png")
    write_dicom(root / "knee.dcm", radiograph((40, 64), seed=9), PixelSpacing=[0.2, 0.1])
    return root


def _points(out: Path, names) -> dict[str, np.ndarray]:
    documents = {n: json.loads(output_path(out, "landmarks", n, ".json").read_text()) for n in names}
    return {n: np.array([[m["x"], m["y"]] for m in d["landmarks"]]) for n, d in documents.items()}


def test_onnxruntime_backend_gives_the_landmarks_of_pytorch(tmp_path, peaked_net):
    """Same landmarks (within 1e-3 original px) and confidences from --backend onnxruntime and torch."""
    inp = _folder(tmp_path / "in")
    onnx_path = Path(export_onnx(peaked_net, tmp_path / "model.onnx", (32, 32)))
    eager = workflow(inp, tmp_path / "torch", allow_random_weights=True, batch_size=4)
    eager.evaluator.network = peaked_net
    summary = eager.evaluator.run()
    assert len(summary["succeeded"]) == 6
    ort = workflow(inp, tmp_path / "ort", backend="onnxruntime", onnx_path=str(onnx_path), batch_size=4)
    assert isinstance(ort.evaluator.inferer, OnnxRuntimeInferer)
    assert ort.evaluator.run() == summary
    expected, found = _points(tmp_path / "torch", summary["succeeded"]), _points(tmp_path / "ort", summary["succeeded"])
    for name in summary["succeeded"]:
        np.testing.assert_allclose(found[name], expected[name], atol=1e-3, rtol=0)
    # the provenance names the model that ran
    document = json.loads(output_path(tmp_path / "ort", "landmarks", "knee.dcm", ".json").read_text())
    assert document["provenance"]["model_file"] == "model.onnx" and len(document["provenance"]["model_sha256"]) == 64


def test_a_model_exported_for_batches_of_one_runs_any_batch(tmp_path, peaked_net):
    """A model with a fixed batch axis of 1 (the README's export without dynamic axes) is run image by image."""
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(peaked_net, (torch.zeros(1, 1, 32, 32),), str(path), input_names=["x"], dynamo=False)
    inputs = torch.randn(3, 1, 32, 32)
    out = OnnxRuntimeInferer(path)(inputs, network=None)
    with torch.no_grad():
        expected = peaked_net(inputs)
    assert out.shape == (3, NUM_LANDMARKS, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_missing_onnx_model_is_an_error_before_anything_is_written(tmp_path):
    inp = _folder(tmp_path / "in")
    out = tmp_path / "out"
    wf = workflow(inp, out, backend="onnxruntime", onnx_path=str(tmp_path / "nowhere.onnx"))
    with pytest.raises(FileNotFoundError, match="nowhere.onnx not found: export it first") as info:
        wf.evaluator.run()
    assert "onnx_export" in str(info.value) and "--backend torch" in str(info.value)
    assert not out.exists()


def test_unknown_backend_is_named(tmp_path):
    with pytest.raises(RuntimeError) as info:  # MONAI's config parser wraps the error
        workflow(_folder(tmp_path / "in"), tmp_path / "out", backend="tensorrt").evaluator
    assert "--backend must be one of ('torch', 'onnxruntime'), got 'tensorrt'" in str(info.value.__cause__)
