"""Folder inference speed on full-size radiographs: end to end against the bare forward pass.

For each model (``demo``: the demo SCN of ``configs/inference.json`` at 128 x 128; ``hand_fast_scn``: with
the ``configs/hand.json`` overlay, 256 x 256, ``scn_variant fast``; ``hand_hourglass``: the stacked hourglass
of ``configs/adversarial.json`` at 256 x 256) and each backend (``torch`` eager, ``onnxruntime``), side by side in one process, this prints:

* ``e2e``: images/s of :class:`scripts.inference.FolderInference` (the ``configs/inference.json``
  evaluator, pipelined: DataLoader workers, batched forward, writer process) on ``--n`` synthetic
  2500 x 2000 16-bit PNGs and as many DICOM files (uncompressed), all outputs on; with
  ``--sequential`` also the sequential path (batch 1, no workers, no writer process);
  with ``--minimal`` also the pipelined path without overlays, label images and SR
  (``--overlays false --label_images false --write_sr false``);
* ``forward``: images/s of the bare forward pass of the same network and inferer, same thread count,
  batch ``--batch_size``, on random inputs of the network's size; ``ratio`` = e2e / forward;
* ``startup``: seconds of ``python -m monai.bundle run`` on a folder of one PNG (process start to
  exit: imports, config parsing, weights, one image), and in-process config parsing + weights;
* ms per stage, measured one image at a time on the first few files: decode (``read_image``), the
  rest of the loading transform (preview copy, checks), each preprocessing transform, forward
  (batch 1), heatmap decoding, each other post-processing transform, each writer;
* ``max_px_vs_torch``: largest landmark difference (original pixels) of the ONNX Runtime run from
  the PyTorch run on the same files and weights.

The weights are random (speed does not depend on them): they are saved once to ``OUT/models`` and
exported to ONNX there (:func:`scripts.inferers.export_onnx`), so both backends run the same model.
The images are rendered by :func:`scripts.data.synthetic.render_hand` (deterministic, seed = index) into
``OUT/images`` and reused by later runs. Nothing is written outside ``--out``.

Usage (alone on the machine; ~10 min on 2 cores with the defaults)::

    python benchmarks/inference_speed.py --n 24 --sequential --minimal --out bench_out/inference_speed --json bench_out/inference_speed.json
    python benchmarks/inference_speed.py --n 4 --models demo --out /tmp/speed   # a dry run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.machine import describe, load_average  # noqa: E402
import scripts.inference  # noqa: E402
import scripts.writers.results  # noqa: E402
import scripts.transforms.io  # noqa: E402
from scripts.checkpoints import load_weights  # noqa: E402
from scripts.data.synthetic import render_hand  # noqa: E402
from scripts.inferers import export_onnx  # noqa: E402
from scripts.transforms.post import landmark_result  # noqa: E402
from tests.helpers import write_dicom  # noqa: E402

CONFIG = REPO_ROOT / "configs" / "inference.json"
ADVERSARIAL = REPO_ROOT / "configs" / "adversarial.json"
HAND = REPO_ROOT / "configs" / "hand.json"
META = REPO_ROOT / "configs" / "metadata.json"
FORMATS = ("png", "dicom")
MINIMAL_OUTPUTS = {"overlays": False, "label_images": False, "write_sr": False}
WRITERS = ("write_overlay", "write_label_image", "write_landmarks_json", "write_markups_json", "write_landmark_sr")


def model_config(name: str) -> tuple[list[Path], dict]:
    """Data overlays (merged after configs/inference.json) and overrides of the benchmarked models."""
    if name == "demo":
        return [], {}
    if name == "hand_fast_scn":
        return [HAND], {"scn_variant": "fast"}
    if name == "hand_hourglass":
        return [HAND], {"network_def": json.loads(ADVERSARIAL.read_text())["network_def"]}
    raise ValueError(f"unknown model {name!r}; choose from demo, hand_fast_scn, hand_hourglass.")


# ---------------------------------------------------------------- inputs


def make_images(folder: Path, n: int, hw: tuple[int, int]) -> dict[str, Path]:
    """``n`` rendered hand radiographs ``hw`` as 16-bit PNG and as DICOM (PixelSpacing 0.1 mm) below
    ``folder/png`` and ``folder/dicom``; existing files are kept (same seed, same image)."""
    folders = {fmt: folder / f"{fmt}_{hw[0]}x{hw[1]}" for fmt in FORMATS}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    for index in range(n):
        png, dcm = folders["png"] / f"hand_{index:03d}.png", folders["dicom"] / f"hand_{index:03d}.dcm"
        if png.exists() and dcm.exists():
            continue
        image, _ = render_hand(np.random.default_rng(index), hw)
        Image.fromarray(image).save(png, compress_level=6)
        write_dicom(dcm, image, PixelSpacing=[0.1, 0.1])
    for fmt, path in folders.items():  # a smaller n than an earlier run: only the first n
        for extra in sorted(path.iterdir())[n:]:
            extra.unlink()
    return folders


def reference_image(folder: Path) -> Path:
    """A histogram-matching reference for the hand overlay (the real one is training data)."""
    path = folder / "reference.png"
    if not path.exists():
        image, _ = render_hand(np.random.default_rng(10_000), (512, 410))
        Image.fromarray(image).save(path)
    return path


# ---------------------------------------------------------------- config


def build(overlays: list[Path], overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIG)] + [str(o) for o in overlays])
    parser.read_meta(str(META))
    parser.update({"bundle_root": str(REPO_ROOT), **overrides})
    return parser


def evaluator_for(overlays: list[Path], overrides: dict) -> tuple[ConfigParser, scripts.inference.FolderInference, float]:
    """The evaluator of ``overrides`` into an emptied ``output_dir`` (no results of earlier runs), and the parse time."""
    shutil.rmtree(overrides["output_dir"], ignore_errors=True)
    start = time.perf_counter()
    parser = build(overlays, overrides)
    evaluator = parser.get_parsed_content("evaluator")
    return parser, evaluator, time.perf_counter() - start


# ---------------------------------------------------------------- measurements


def forward_rate(evaluator, batch_size: int, repeats: int) -> float:
    """Images/s of ``inferer(random (B, 1, H', W'), network)``, the runner's network and inferer."""
    network = evaluator.load_network()
    grid = evaluator.writer.provenance["preprocessing_grid"]
    height, width = int(grid["height"]), int(grid["width"])
    inputs = torch.randn(batch_size, 1, height, width).to(evaluator.device, memory_format=evaluator.memory_format)
    with torch.inference_mode():
        for _ in range(2):
            evaluator.inferer(inputs, network)
        start = time.perf_counter()
        for _ in range(repeats):
            evaluator.inferer(inputs, network)
        elapsed = time.perf_counter() - start
    return batch_size * repeats / elapsed


class StageTimer:
    """Milliseconds per call of named stages (median over calls)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)

    @contextlib.contextmanager
    def time(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name].append(1000.0 * (time.perf_counter() - start))

    def wrap(self, module, attribute: str, name: str):
        """Time every call of ``module.attribute`` under ``name`` (undone by the returned callable)."""
        original = getattr(module, attribute)

        def timed(*args, **kwargs):
            with self.time(name):
                return original(*args, **kwargs)

        setattr(module, attribute, timed)
        return lambda: setattr(module, attribute, original)

    def medians(self) -> dict[str, float]:
        return {name: round(statistics.median(values), 1) for name, values in self.times.items()}


def stage_times(parser: ConfigParser, evaluator, count: int, out_dir: Path) -> dict[str, float]:
    """Ms per stage on the first ``count`` files, one at a time (see the module docstring)."""
    timer = StageTimer()
    preprocessing = parser.get_parsed_content("preprocessing").transforms
    postprocessing = parser.get_parsed_content("postprocessing").transforms
    network = evaluator.load_network()
    undo = [timer.wrap(scripts.transforms.io, "read_image", "decode")]
    undo += [timer.wrap(scripts.writers.results, writer, "write " + writer.removeprefix("write_")) for writer in WRITERS]
    writer = copy.copy(evaluator.writer)  # the same outputs, written below out_dir
    writer.output_dir = out_dir
    try:
        with torch.inference_mode():
            for item in evaluator.dataset.data[:count]:
                sample = dict(item)
                for transform in preprocessing:
                    with timer.time(type(transform).__name__):
                        sample = transform(sample)
                with timer.time("forward (batch 1)"):
                    heatmaps = evaluator.predict([sample], network)[0]
                sample = {**sample, "pred": heatmaps}
                for transform in postprocessing:
                    with timer.time(type(transform).__name__):
                        sample = transform(sample)
                result = landmark_result(sample, item["id"])
                writer.write(result, sample, item["image"])
    finally:
        for restore in undo:
            restore()
    medians = timer.medians()
    # the loading transform includes the decode: report the rest of it on its own
    if "LoadLandmarkImaged" in medians and "decode" in medians:
        medians["LoadLandmarkImaged (besides decode)"] = round(medians.pop("LoadLandmarkImaged") - medians["decode"], 1)
    return medians


def landmarks_of(folder: Path) -> dict[str, np.ndarray]:
    points = {}
    for path in sorted((folder / "landmarks").rglob("*.json")):
        document = json.loads(path.read_text())
        points[document["image"]] = np.array([[m["x"], m["y"]] for m in document["landmarks"]], dtype=float)
    return points


def cli_startup(overlays: list[Path], image: Path, out_dir: Path) -> float:
    """Seconds of ``python -m monai.bundle run`` on a folder holding one image, process start to exit."""
    single = out_dir / "single_input"
    single.mkdir(parents=True, exist_ok=True)
    target = single / image.name
    if not target.exists():
        target.symlink_to(image)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str([str(CONFIG)] + [str(o) for o in overlays]), "--meta_file", str(META),
        "--bundle_root", str(REPO_ROOT), "--dataset_dir", str(single), "--output_dir", str(out_dir / "single_output"),
    ]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"start-up run failed: {proc.stderr[-2000:]}")
    return elapsed


# ---------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24, help="images per format")
    ap.add_argument("--hw", default="2500x2000", help="image height x width, pixels")
    ap.add_argument("--models", default="demo,hand_fast_scn,hand_hourglass")
    ap.add_argument("--backends", default="torch,onnxruntime")
    ap.add_argument("--formats", default="png,dicom")
    ap.add_argument("--batch_size", type=int, default=None, help="default: the config's")
    ap.add_argument("--num_workers", default=None, help="default: the config's ('auto')")
    ap.add_argument("--num_writers", type=int, default=None, help="writer processes (default: the config's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    ap.add_argument("--stage_images", type=int, default=3, help="files timed stage by stage")
    ap.add_argument("--forward_repeats", type=int, default=5)
    ap.add_argument("--sequential", action="store_true", help="also time the sequential path")
    ap.add_argument("--minimal", action="store_true",
                    help="also time the pipelined path with only JSON, CSV and markups (no overlay, label image, SR)")
    ap.add_argument("--no_startup", action="store_true", help="skip the start-up subprocess")
    ap.add_argument("--out", default="bench_out/inference_speed")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).absolute()
    hw = tuple(int(v) for v in args.hw.lower().split("x"))
    machine = describe()
    load_start = machine["load_average"]
    print(f"CPU: {machine['cpu']}, bf16 fast: {machine['bf16_is_fast']}; "
          f"cores {len(os.sched_getaffinity(0))}, torch threads {torch.get_num_threads()}, load average {load_start:.2f}; "
          f"random weights (speed only); {args.n} images per format, {hw[0]} x {hw[1]}", flush=True)
    folders = make_images(out / "images", args.n, hw)
    reference = reference_image(out / "images")
    results = {"n": args.n, "hw": hw, "threads": torch.get_num_threads(), "load_start": load_start, "machine": machine,
               "models": {}}

    for model in args.models.split(","):
        data_overlays, model_overrides = model_config(model)
        overrides = {**model_overrides, "reference_image": str(reference), "progress": False}
        if args.batch_size:
            overrides["batch_size"] = args.batch_size
        if args.num_workers is not None:
            overrides["num_workers"] = args.num_workers if args.num_workers == "auto" else int(args.num_workers)
        if args.num_writers is not None:
            overrides["num_writers"] = args.num_writers
        # random weights, saved once, so that every backend and run uses the same ones
        models_dir = out / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        ckpt, onnx_path = models_dir / f"{model}.pt", models_dir / f"{model}.onnx"
        parser = build(data_overlays, {**overrides, "dataset_dir": str(folders["png"]), "output_dir": str(out / "unused")})
        if not ckpt.exists():
            torch.manual_seed(0)
            torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
        overrides["ckpt_path"], overrides["onnx_path"] = str(ckpt), str(onnx_path)
        if "onnxruntime" in args.backends and not onnx_path.exists():
            network = load_weights(parser.get_parsed_content("network_def"), ckpt)
            export_onnx(network, onnx_path, parser.get_parsed_content("spatial_size"))
        overlay = out / "configs" / f"{model}.json"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        overlay.write_text(json.dumps({k: v for k, v in overrides.items() if k != "progress"}, indent=1))

        figures: dict = {}
        for backend in args.backends.split(","):
            row: dict = {}
            reference_points = None
            for fmt in args.formats.split(","):
                run_dir = out / "runs" / f"{model}_{backend}_{fmt}"
                parser, evaluator, parse_s = evaluator_for(
                    data_overlays, {**overrides, "backend": backend, "dataset_dir": str(folders[fmt]), "output_dir": str(run_dir)})
                row["parse_s"] = round(parse_s, 2)
                start = time.perf_counter()
                with contextlib.redirect_stdout(sys.stderr):
                    evaluator.run()
                row[f"e2e_{fmt}"] = round(args.n / (time.perf_counter() - start), 2)
                row["batch_size"], row["num_workers"] = evaluator.batch_size, evaluator.num_workers
                if backend == "torch" and fmt == "png":
                    row["forward"] = round(forward_rate(evaluator, evaluator.batch_size, args.forward_repeats), 2)
                    row["stages_ms_png"] = stage_times(parser, evaluator, args.stage_images, out / "stages" / model)
                elif backend != "torch" and fmt == "png":
                    row["forward"] = round(forward_rate(evaluator, evaluator.batch_size, args.forward_repeats), 2)
                if fmt == "dicom" and backend == "torch":
                    row["stages_ms_dicom"] = stage_times(parser, evaluator, args.stage_images, out / "stages" / model)
                if args.sequential and backend == "torch":
                    _, sequential, _ = evaluator_for(data_overlays, {**overrides, "backend": backend, "dataset_dir": str(folders[fmt]),
                                                      "output_dir": str(run_dir) + "_sequential", "batch_size": 1,
                                                      "num_workers": 0, "num_writers": 0})
                    start = time.perf_counter()
                    with contextlib.redirect_stdout(sys.stderr):
                        sequential.run()
                    row[f"sequential_{fmt}"] = round(args.n / (time.perf_counter() - start), 2)
                    points, seq_points = landmarks_of(run_dir), landmarks_of(Path(str(run_dir) + "_sequential"))
                    row[f"max_px_pipelined_vs_sequential_{fmt}"] = float(max(
                        np.abs(points[k] - seq_points[k]).max() for k in points))
                if args.minimal and backend == "torch":
                    _, minimal, _ = evaluator_for(data_overlays, {**overrides, "backend": backend, "dataset_dir": str(folders[fmt]),
                                                   "output_dir": str(run_dir) + "_minimal", **MINIMAL_OUTPUTS})
                    start = time.perf_counter()
                    with contextlib.redirect_stdout(sys.stderr):
                        minimal.run()
                    row[f"e2e_minimal_outputs_{fmt}"] = round(args.n / (time.perf_counter() - start), 2)
                points = landmarks_of(run_dir)
                torch_dir = out / "runs" / f"{model}_torch_{fmt}"
                if backend != "torch" and torch_dir.exists():
                    torch_points = landmarks_of(torch_dir)
                    reference_points = max(float(np.abs(points[k] - torch_points[k]).max()) for k in points)
                    row[f"max_px_vs_torch_{fmt}"] = reference_points
            if "forward" in row and "e2e_png" in row:
                row["ratio_png"] = round(row["e2e_png"] / row["forward"], 2)
            if "forward" in row and "e2e_dicom" in row:
                row["ratio_dicom"] = round(row["e2e_dicom"] / row["forward"], 2)
            if not args.no_startup:
                overlay.write_text(json.dumps({**json.loads(overlay.read_text()), "backend": backend}, indent=1))
                row["startup_cli_1_image_s"] = round(cli_startup(data_overlays + [overlay], sorted(folders["png"].iterdir())[0],
                                                                 out / "startup" / f"{model}_{backend}"), 2)
            figures[backend] = row
            print(f"{model:15s} {backend:11s} " + ", ".join(f"{k} {v}" for k, v in row.items() if not k.startswith("stages")),
                  flush=True)
            for key in ("stages_ms_png", "stages_ms_dicom"):
                if key in row:
                    print(f"{'':27s} {key}: " + ", ".join(f"{k} {v}" for k, v in row[key].items()), flush=True)
        results["models"][model] = figures

    results["load_end"] = load_average()
    print(f"load average at the end {results['load_end']:.2f} (other jobs slow every figure; compare the ratios)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
