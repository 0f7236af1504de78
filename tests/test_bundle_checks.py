"""The checks the MONAI model zoo runs on a bundle, offline: metadata against the schema kept in the
repository (required config properties: tests/test_configs.py), network input/output against the
metadata, and TorchScript / ONNX export giving the eager network's heatmaps."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import jsonschema
import monai
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from tests.helpers import SMALL, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
META = CONFIGS / "metadata.json"
SCHEMA = CONFIGS / "metadata_schema.json"
INFERENCE = CONFIGS / "inference.json"


def metadata() -> dict:
    return json.loads(META.read_text())


# ----------------------------------------------------------------------------------------------
# metadata


def test_top_level_metadata_is_a_link_to_configs():
    link = ROOT / "metadata.json"
    assert link.is_symlink() and os.readlink(link) == "configs/metadata.json"
    assert link.resolve() == META.resolve()


def test_metadata_verifies_against_the_local_schema():
    jsonschema.Draft7Validator.check_schema(json.loads(SCHEMA.read_text()))
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA))  # the schema file exists: nothing is downloaded
    meta = metadata()
    assert meta["version"] in meta["changelog"], "changelog has no entry for the current version"
    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]


def _drop(path: str):
    def mutate(meta: dict) -> None:
        *parents, last = path.split("#")
        node = meta
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _set(path: str, value):
    def mutate(meta: dict) -> None:
        *parents, last = path.split("#")
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


PRED = "network_data_format#outputs#pred"
IMAGE = "network_data_format#inputs#image"
BROKEN = {
    "no copyright": _drop("copyright"),
    "no required_packages_version": _drop("required_packages_version"),
    "no numpy_version": _drop("numpy_version"),
    "old optional_packages_version": _set("optional_packages_version", {"pydicom": "3.0.2"}),
    "version not semantic": _set("version", "0.1"),
    "no outputs": _drop("network_data_format#outputs"),
    "output without dtype": _drop(f"{PRED}#dtype"),
    "input without channel_def": _drop(f"{IMAGE}#channel_def"),
    "input without is_patch_data": _drop(f"{IMAGE}#is_patch_data"),
    "unknown dtype": _set(f"{IMAGE}#dtype", "float"),
    "num_channels zero": _set(f"{PRED}#num_channels", 0),
    "bad spatial shape": _set(f"{IMAGE}#spatial_shape", ["8*x", "8*n"]),
    "channel_def key not an index": _set(f"{PRED}#channel_def", {"a": "landmark"}),
    "value_range of three": _set(f"{IMAGE}#value_range", [0, 1, 2]),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_schema_rejects_broken_metadata(tmp_path, name):
    meta = copy.deepcopy(metadata())
    BROKEN[name](meta)
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(path), filepath=str(SCHEMA))


# ----------------------------------------------------------------------------------------------
# workflow properties: tests/test_configs.py (one ConfigWorkflow test per config combination)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


# ----------------------------------------------------------------------------------------------
# network input / output and export


def eager_network(checkpoint: Path) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    for key, value in SMALL.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(checkpoint, weights_only=True))
    return net.eval()


@pytest.mark.parametrize("n", [1, 4])
def test_verify_net_in_out(n):
    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=str(INFERENCE), device="cpu", n=n,
                      num_filters=4, **{"network_def#sc_num_filters": 4})


def test_ckpt_export_torchscript_matches_eager(tmp_path, checkpoint):
    path = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(path), ckpt_file=str(checkpoint), meta_file=str(META),
        config_file=str(INFERENCE), bundle_root=str(ROOT), **SMALL,
    )
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == metadata()["version"]
    assert "network_def" in json.loads(extra["inference.json"])
    x = torch.randn(2, 1, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = eager_network(checkpoint)(x)
        found = scripted.eval()(x)
    assert expected.abs().max() > 1e-3  # heatmaps that are not all ~0
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_onnx_export_matches_eager(tmp_path, checkpoint):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from monai.bundle import onnx_export
    from onnx.reference import ReferenceEvaluator

    path = tmp_path / "model.onnx"
    onnx_export(
        net_id="network_def", filepath=str(path), ckpt_file=str(checkpoint), meta_file=str(META),
        config_file=str(INFERENCE), input_shape=[1, 1, 32, 32], **SMALL,
    )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    found = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = eager_network(checkpoint)(x).numpy()
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(found, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
