"""The pipelined folder runner (scripts.inference.FolderInference: DataLoader workers, batched forward,
writer processes) against the sequential path, and its per-file failure isolation.

Real files, the real configs/inference.json workflow, a tiny SCN with random weights (``SMALL``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.writers import output_path
from tests.helpers import tiny_checkpoint, write_dicom
from tests.test_inference import radiograph, read_csv, tree_digest, workflow

SEQUENTIAL = {"batch_size": 1, "num_workers": 0, "num_writers": 0}
PIPELINED = {"batch_size": 3, "num_workers": 2, "num_writers": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _folder(root: Path) -> tuple[list[str], list[str]]:
    """Nine images of different sizes and formats with two bad files among them; (good, bad) names."""
    root.mkdir()
    good = []
    for k in range(6):
        Image.fromarray(radiograph((50 + 9 * k, 70 - 4 * k), seed=k)).save(root / f"img{k}.png")
        good.append(f"img{k}.png")
    write_dicom(root / "knee.dcm", radiograph((40, 64), seed=7), PixelSpacing=[0.2, 0.1])
    Image.fromarray(np.full((45, 45), 90, np.uint8)).save(root / "img2_constant.png")
    good += ["knee.dcm", "img2_constant.png"]
    png = (root / "img0.png").read_bytes()
    (root / "img1_cut.png").write_bytes(png[: len(png) // 2])  # fails while reading, mid-batch
    (root / "img4_empty.dcm").write_bytes(b"")
    return sorted(good), ["img1_cut.png", "img4_empty.dcm"]


def _documents(out: Path, names) -> dict[str, dict]:
    return {n: json.loads(output_path(out, "landmarks", n, ".json").read_text()) for n in names}


def test_pipelined_run_gives_the_results_of_the_sequential_run(tmp_path, checkpoint):
    inp = tmp_path / "in"
    good, bad = _folder(inp)
    before = tree_digest(inp)
    summaries = {}
    for name, settings in (("sequential", SEQUENTIAL), ("pipelined", PIPELINED)):
        wf = workflow(inp, tmp_path / name, ckpt_path=str(checkpoint), **settings)
        assert (wf.evaluator.batch_size, wf.evaluator.num_workers) == (settings["batch_size"], settings["num_workers"])
        summaries[name] = wf.evaluator.run()
    assert summaries["pipelined"] == summaries["sequential"]
    assert summaries["pipelined"]["succeeded"] == good and summaries["pipelined"]["failed"] == bad
    assert tree_digest(inp) == before

    sequential, pipelined = _documents(tmp_path / "sequential", good), _documents(tmp_path / "pipelined", good)
    for name in good:
        a, b = sequential[name], pipelined[name]
        np.testing.assert_allclose([[m["x"], m["y"]] for m in b["landmarks"]], [[m["x"], m["y"]] for m in a["landmarks"]],
                                   atol=1e-3, rtol=0)
        np.testing.assert_allclose([m["confidence"] for m in b["landmarks"]], [m["confidence"] for m in a["landmarks"]],
                                   atol=1e-5)
        assert (b["status"], b["status_reasons"]) == (a["status"], a["status_reasons"])
    # the same files, errors and table rows (the CSV in folder order, not in the order writers finished)
    files = {p.relative_to(tmp_path / "sequential") for p in (tmp_path / "sequential").rglob("*") if p.is_file()}
    assert files == {p.relative_to(tmp_path / "pipelined") for p in (tmp_path / "pipelined").rglob("*") if p.is_file()}
    assert read_csv(tmp_path / "pipelined" / "errors.csv") == read_csv(tmp_path / "sequential" / "errors.csv")
    assert [r["image"] for r in read_csv(tmp_path / "pipelined" / "landmarks.csv")] == good
    stages = {r["image"]: r["stage"] for r in read_csv(tmp_path / "pipelined" / "errors.csv")}
    assert stages == {"img1_cut.png": "reading", "img4_empty.dcm": "reading"}


class RefusesOneImage(torch.nn.Module):
    """``network``, but a batch holding ``refused`` (a preprocessed image ``(C, H, W)``) raises."""

    def __init__(self, network: torch.nn.Module, refused: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("refused", refused.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(torch.equal(image, self.refused) for image in x):
            raise FloatingPointError("refused input")
        return self.network(x)


def test_a_batch_that_fails_is_retried_image_by_image(tmp_path, checkpoint):
    """The forward pass fails for one image: only that image fails (stage inference), its batch mates go on."""
    inp = tmp_path / "in"
    good, _ = _folder(inp)
    wf = workflow(inp, tmp_path / "out", ckpt_path=str(checkpoint), **PIPELINED)
    refused = next(i for i, item in enumerate(wf.evaluator.dataset.data) if item["id"] == "img3.png")
    network = wf.evaluator.load_network()  # the checkpoint, then wrapped
    wf.evaluator.network = RefusesOneImage(network, torch.as_tensor(wf.evaluator.dataset[refused]["image"]))
    wf.evaluator.allow_random_weights, wf.evaluator.ckpt_path = True, None
    summary = wf.evaluator.run()
    assert summary["succeeded"] == [n for n in good if n != "img3.png"]
    errors = {r["image"]: r for r in read_csv(tmp_path / "out" / "errors.csv")}
    assert errors["img3.png"]["stage"] == "inference"
    assert errors["img3.png"]["reason"] == "FloatingPointError: refused input"


def test_overlays_and_label_images_can_be_switched_off(tmp_path, checkpoint):
    inp = tmp_path / "in"
    good, _ = _folder(inp)
    out = tmp_path / "out"
    workflow(inp, out, ckpt_path=str(checkpoint), overlays=False, label_images="false").evaluator.run()
    assert sorted(p.name for p in out.iterdir()) == ["errors.csv", "landmarks", "landmarks.csv", "markups", "sr"]
    assert len(list((out / "landmarks").rglob("*.json"))) == len(good)
