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

from scripts.checkpoints import load_weights
from scripts.heatmap import decode_heatmaps, gaussian_heatmaps
from scripts.inferers import (AffineTTAInferer, AutocastInferer, OnnxRuntimeInferer, _pixel_to_normalised, _warp,
                              export_onnx, perturbation_matrix)
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


def _blob(point_xy, hw=(96, 128), sigma=3.0) -> torch.Tensor:
    return gaussian_heatmaps(torch.tensor([point_xy], dtype=torch.float32), hw, sigma=sigma)[None]


def test_perturbation_matrix_rotates_about_the_centre_then_shifts():
    m = perturbation_matrix(90.0, 2.0, 1.0, -1.0, height=5, width=7)  # centre (3, 2)
    centre = m @ torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    right = m @ torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(centre[:2], torch.tensor([4.0, 1.0], dtype=torch.float64))
    # one px to the right of the centre goes 2 px up (y points down: counter-clockwise as displayed)
    torch.testing.assert_close(right[:2], torch.tensor([4.0, -1.0], dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("pool", [1, 4])
def test_tta_maps_every_pass_back_onto_the_unperturbed_grid(pool):
    """An equivariant 'network' (the input itself, or pooled to a 1/4 grid): each pass's heatmap is warped
    back, so the averaged peak stays where the landmark is, while one perturbed pass alone moves it."""
    point = (70.3, 41.6)
    image = _blob(point)
    net = torch.nn.Identity() if pool == 1 else torch.nn.AvgPool2d(pool)
    plain = AutocastInferer(enabled=False)
    rotated = [(8.0, 1.06, 1.5, -2.0)]  # no identity pass: the result comes from the back-warp alone

    def decoded(heatmaps):
        xy = decode_heatmaps(heatmaps)[0][0, 0]
        return (xy + 0.5) * pool - 0.5  # coarse grid -> input px (pixel centres at integers)

    reference = decoded(plain(image, net))  # without TTA (the decoder's own bias on the 1/4 grid included)
    assert torch.dist(reference, torch.tensor(point)) < 0.05 * pool
    for perturbations in (rotated, [(0.0, 1.0, 0.0, 0.0), (-3.0, 0.96, 0.0, 0.0), (3.0, 1.04, -1.0, 1.0)]):
        out = AffineTTAInferer(plain, perturbations)(image, net)
        assert out.shape == (1, 1, 96 // pool, 128 // pool) and out.dtype == torch.float32
        assert torch.dist(decoded(out), reference) < 0.06 * pool
    # one pass without the way back lands elsewhere: the assertion above can fail
    m = perturbation_matrix(*rotated[0], 96, 128)
    moved = (m @ torch.tensor([*point, 1.0], dtype=torch.float64))[:2].float()
    to_norm = _pixel_to_normalised(96, 128)
    perturbed = _warp(image, torch.linalg.inv(to_norm @ m @ torch.linalg.inv(to_norm)), "border")
    assert torch.dist(decoded(plain(perturbed, net)), moved) < 0.1 * pool
    assert torch.dist(moved, torch.tensor(point)) > 3.0


def test_tta_passes_the_network_to_the_wrapped_inferer_and_rejects_bad_perturbations():
    seen = []

    class Recording(AutocastInferer):
        def __call__(self, inputs, network, *args, **kwargs):
            seen.append(inputs.shape)
            return super().__call__(inputs, network, *args, **kwargs)

    AffineTTAInferer(Recording(enabled=False))(torch.zeros(2, 1, 16, 24), torch.nn.Identity())
    assert seen == [(2, 1, 16, 24)] * 5  # the default: identity, two rotations, two scales
    with pytest.raises(ValueError, match="angle_deg, scale, shift_x, shift_y"):
        AffineTTAInferer(AutocastInferer(), [(1.0, 2.0)])
    with pytest.raises(ValueError, match="non-empty"):
        AffineTTAInferer(AutocastInferer(), [])


class InputAsHeatmaps(torch.nn.Module):
    """An equivariant stand-in for a landmark network: every heatmap is the input image, scaled to a peak of 100."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peak = x.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        return (100.0 * x / peak).expand(-1, NUM_LANDMARKS, -1, -1)


def test_folder_inference_and_evaluation_configs_take_tta(tmp_path):
    """``--tta true`` wraps the backend in configs/inference.json and the evaluator in configs/evaluate.json; a
    folder run with it finds the same landmarks as without it for an equivariant network."""
    inp = tmp_path / "in"
    inp.mkdir()
    blob = 60000.0 * np.exp(-(((np.mgrid[:80, :64][1] - 40.3) ** 2 + (np.mgrid[:80, :64][0] - 22.6) ** 2) / (2 * 6.0**2)))
    Image.fromarray(blob.astype(np.uint16)).save(inp / "blob.png")
    found = {}
    for tta in (False, True):
        wf = workflow(inp, tmp_path / f"out_{tta}", allow_random_weights=True, tta=tta)
        assert isinstance(wf.evaluator.inferer, AffineTTAInferer) == tta
        wf.evaluator.network = InputAsHeatmaps()
        assert wf.evaluator.run()["succeeded"] == ["blob.png"]
        document = json.loads((tmp_path / f"out_{tta}" / "landmarks" / "blob.png.json").read_text())
        found[tta] = np.array([[lm["x"], lm["y"]] for lm in document["landmarks"]])
    np.testing.assert_allclose(found[False], [[40.3, 22.6]] * NUM_LANDMARKS, atol=0.1)
    np.testing.assert_allclose(found[True], found[False], atol=0.15)  # 0.06 px on the 32 x 32 grid, x2 / x2.5 here

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / f) for f in ("train.json", "evaluate.json")])
    parser.update({"bundle_root": str(BUNDLE_ROOT), **SMALL})
    assert not isinstance(parser.get_parsed_content("validate#inferer"), AffineTTAInferer)
    parser["tta"] = "true"  # as the command line gives it
    parser.parse(True)
    tta = parser.get_parsed_content("validate#inferer")
    assert isinstance(tta, AffineTTAInferer) and isinstance(tta.inferer, AutocastInferer)


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
