"""Occlusion benchmark: do the methods keep the landmark configuration when anatomy is hidden?

The published motivation of Adversarial PoseNet is robustness where anatomy is occluded or ambiguous
(prostheses, a restricted field of view). This script trains every method at an equal wall-clock budget
(``benchmarks/real_hand.py`` per method and seed, in fresh processes), then evaluates each checkpoint on the
clean evaluation split and on occluded copies of it, and writes a table.

Datasets (``--datasets``):

* ``hand``: the real hand radiographs (``--dataset_dir``, default ``../shared/data/hand-ipilab``; skipped
  with a message where absent), overlay ``configs/hand.json``, evaluated on ``--hand-eval-split`` (``valid``).
* ``lower_limb``: synthetic long-leg radiographs (``scripts/data/synthetic.py``, seed 0, 32 train / 8 valid /
  8 test images of 1024 x 400 px), overlay ``configs/lower_limb.json``; checkpoints are selected on a tuning subset of
  ``train`` and evaluated on ``test``.

Occlusions (deterministic functions of each image's annotation; applied at evaluation only, to copies
written under ``--out``; the inputs are never modified):

* ``implant``: metal (the image type's maximum grey value, brighter than any bone).
  Hand: a plate of 40 x 10 normalised mm (landmarks 1-5 = 50 mm) along the middle finger, centred on its
  MCP joint (landmark 25), with three screw heads. Lower limb: ``scripts.data.synthetic`` draws a hip stem and
  ball on the right femoral head and a knee replacement on the left knee into the same anatomy
  (``implants=("hip_right", "knee_left")``).
* ``collimation``: a collimator blade perpendicular to the long axis (hand: radius landmark 2 -> middle
  fingertip 28; lower limb: hips -> ankles) blanks everything beyond it to the image's 1st-percentile grey.
  Hand: the blade passes half-way between the middle finger's PIP and DIP (26, 27), so the distal phalanges
  are outside the field; lower limb: 70 % of the way from the knees to the ankles, so both ankles are outside.
* ``missing_finger`` (hand): the ring finger beyond its MCP joint (landmark 29 to 10 mm past the tip 32,
  8 mm either side) is replaced by the film's grey (median of a border frame 3 % of the image wide), as
  after an amputation; its landmarks are still scored against
  the annotation (where a configuration-aware model would put them).

Measures per method, seed and condition (from the evaluation report's ``per_point.csv``): mean / median
point error (px of the 256 x 256 resized image and original px; normalised mm for the hand, mm for the
lower limb), outliers (> 10 px@256 per image and %), and the **wrong-finger/side fraction**: the share of
landmarks that belong to a finger (hand: thumb 17-20, index 16+21-24, middle 15+25-28, ring 14+29-32,
little 13+33-36, metacarpal base included) or side (lower limb: right 0-2, left 3-5) whose prediction lies
strictly nearer to the annotated position of some landmark of *another* finger/side than to its own
annotated position. The same measures are also given for the *occluded landmarks* only (those whose
annotation lies under the occluder or outside the collimated field; the implanted joints for the lower
limb).

Training protocol: ``real_hand.py``'s (checkpoint selected on a tuning subset carved from ``train``,
never on the evaluated split; ``--real-hand-arg`` passes extra arguments to it), one seed per call.
``--skip-training`` reuses the checkpoints already under ``--out``.

Example (the lead's full run, about 80 minutes on 2 cores)::

    python benchmarks/occlusion.py --budget-minutes 8 --limb-budget-minutes 4 --seeds 0,1 --out bench_out/occlusion

Dry run (1 minute per method, 1 seed)::

    python benchmarks/occlusion.py --budget-minutes 1 --limb-budget-minutes 1 --seeds 0 --out bench_out/occlusion_dry
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.compare_methods import COMPARISON_LEARNING_RATE, METHODS, real_hand_command  # noqa: E402
from scripts.data import LandmarkDataset  # noqa: E402
from scripts.data.image_reader import read_image  # noqa: E402
from scripts.data.phantoms import HAND_FINGER_CHAINS  # noqa: E402
from scripts.data.synthetic import generate_demo_dataset  # noqa: E402
from scripts.writers import atomic_write, write_text  # noqa: E402
from scripts.writers.files import write_csv, write_json  # noqa: E402

HAND_GROUPS = HAND_FINGER_CHAINS  # the 37-landmark hand layout: the real data and the demo phantom share it
LIMB_GROUPS = {"right": (0, 1, 2), "left": (3, 4, 5)}
LIMB_IMPLANTS = ("hip_right", "knee_left")
LIMB_IMPLANTED_LANDMARKS = (0, 4)
LIMB_DATA = {"kind": "lower_limb", "num_train": 32, "num_valid": 8, "num_test": 8, "seed": 0}
DATASETS = {
    "hand": {"overlay": "configs/hand.json", "groups": HAND_GROUPS, "conditions": ("clean", "implant", "collimation", "missing_finger")},
    "lower_limb": {"overlay": "configs/lower_limb.json", "groups": LIMB_GROUPS, "conditions": ("clean", "implant", "collimation")},
}


# ----------------------------------------------------------------------------------------- the occluders


def _unit_px(points: np.ndarray) -> float:
    """Hand: px per normalised mm (landmarks 1 and 5 are 50 mm apart)."""
    return float(np.linalg.norm(points[1] - points[5])) / 50.0


def _grid(hw):
    rows, cols = np.mgrid[0 : hw[0], 0 : hw[1]]
    return cols.astype(np.float64), rows.astype(np.float64)


def segment_mask(hw, a, b, radius: float) -> np.ndarray:
    """``(H, W)`` bool: pixel centres within ``radius`` px of the segment ``a``-``b`` (points ``(x, y)``)."""
    x, y = _grid(hw)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ab = b - a
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1]) <= radius


def beyond_mask(hw, point, direction) -> np.ndarray:
    """``(H, W)`` bool: pixel centres on the side of the line through ``point`` that ``direction`` points to."""
    x, y = _grid(hw)
    d = np.asarray(direction, np.float64)
    return (x - point[0]) * d[0] + (y - point[1]) * d[1] > 0


def inside(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: which points ``(x, y)`` fall on a True pixel of ``mask`` (outside the image: False)."""
    out = np.zeros(len(points), dtype=bool)
    for k, (px, py) in enumerate(points):
        if np.isfinite(px) and np.isfinite(py):
            c, r = int(round(px)), int(round(py))
            out[k] = 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and bool(mask[r, c])
    return out


def occlude(image: np.ndarray, points: np.ndarray, condition: str, dataset: str, metal: float) -> tuple[np.ndarray, np.ndarray]:
    """Occluded copy of ``image`` ``(H, W)`` and the mask ``(H, W)`` of what was changed.

    Args:
        points: ``(N, 2)`` annotation ``(x, y)`` original px (the occluder's placement only).
        condition: ``implant``, ``collimation`` or ``missing_finger`` (see the module docstring).
        dataset: ``hand`` or ``lower_limb``.
        metal: grey value of metal (the maximum of the image's type).
    """
    hw = image.shape
    background = float(np.percentile(image, 1.0))
    out = image.copy()
    if condition == "implant" and dataset == "hand":
        unit = _unit_px(points)
        axis = points[26] - points[15]
        axis = axis / max(np.linalg.norm(axis), 1e-9)
        centre = points[25]
        mask = segment_mask(hw, centre - 15 * unit * axis, centre + 15 * unit * axis, 5 * unit)
        out[mask] = metal
        for s in (-10.0, 0.0, 10.0):  # screw heads, a little brighter ring around the plate's axis
            screw = segment_mask(hw, centre + (s - 1) * unit * axis, centre + (s + 1) * unit * axis, 3 * unit)
            mask |= screw
            out[screw] = metal
        return out, mask
    if condition == "collimation":
        if dataset == "hand":
            axis, blade = points[28] - points[2], (points[26] + points[27]) / 2.0
        else:
            top, knees, bottom = points[[0, 3]].mean(0), points[[1, 4]].mean(0), points[[2, 5]].mean(0)
            axis, blade = bottom - top, knees + 0.7 * (bottom - knees)
        mask = beyond_mask(hw, blade, axis)
        out[mask] = background
        return out, mask
    if condition == "missing_finger" and dataset == "hand":
        unit = _unit_px(points)
        tip_dir = points[32] - points[31]
        tip = points[32] + 10 * unit * tip_dir / max(np.linalg.norm(tip_dir), 1e-9)
        mask = np.zeros(hw, dtype=bool)
        for a, b in zip([points[29], points[30], points[31]], [points[30], points[31], tip]):
            mask |= segment_mask(hw, a, b, 8 * unit)
        frame = max(2, round(0.03 * min(hw)))  # the film around the hand: the median of a border frame
        border = np.concatenate([image[:frame].ravel(), image[-frame:].ravel(), image[:, :frame].ravel(), image[:, -frame:].ravel()])
        out[mask] = float(np.median(border))
        return out, mask
    raise ValueError(f"occlude: no condition {condition!r} for dataset {dataset!r}.")


def _write_png(path: Path, array: np.ndarray, bits: int) -> None:
    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = np.clip(np.rint(array), 0, 2**bits - 1).astype(dtype)
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def _copy_rows(source: Path, name: str, ids: set[str], target: Path, split: str | None = None) -> None:
    """Rows of ``source/name`` (CSV) whose id is in ``ids`` to ``target/name``; optionally the split renamed."""
    with open(source / name, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if r and r[0] in ids]
    if split is not None and name == "splits.csv":
        kept = [kept[0]] + [[r[0], split, *r[2:]] for r in kept[1:]]
    text = "".join(",".join(r) + "\n" for r in kept)
    write_text(target / name, text)


def write_occluded_dataset(dataset_dir: Path, split: str, condition: str, dataset: str, target: Path) -> dict[str, list[int]]:
    """Occluded copies of split ``split`` of ``dataset_dir`` as a dataset folder ``target`` (PNG images).

    Returns ``{image id: [indices of the landmarks under the occluder]}`` (also written to
    ``target/occluded_landmarks.json``).
    """
    data = LandmarkDataset(str(dataset_dir))
    items = data.datalist(split)
    occluded: dict[str, list[int]] = {}
    for item in items:
        record = read_image(item["image"])
        points = np.asarray(item["landmarks"], dtype=np.float64)
        bits = 8 if float(record.array.max()) <= 255 else 16
        image, mask = occlude(record.array.astype(np.float64), points, condition, dataset, metal=2.0**bits - 1)
        _write_png(target / "images" / f"{item['id']}.png", image, bits)
        occluded[str(item["id"])] = [int(k) for k in np.flatnonzero(inside(mask, points))]
    ids = set(occluded)
    _copy_rows(dataset_dir, "landmarks.csv", ids, target)
    _copy_rows(dataset_dir, "splits.csv", ids, target)
    write_json(target / "occluded_landmarks.json", occluded)
    return occluded


# ----------------------------------------------------------------------------------------------- measures


def wrong_group(pred: np.ndarray, true: np.ndarray, groups: dict[str, tuple[int, ...]]) -> np.ndarray:
    """``(N,)`` float: 1 where landmark ``i`` of a group is predicted strictly nearer to the annotation of a
    landmark of another group than to its own, 0 where not, NaN for landmarks of no group or without
    annotation/prediction. ``pred``, ``true``: ``(N, 2)`` original px."""
    group_of = {i: g for g, members in groups.items() for i in members}
    out = np.full(len(true), np.nan)
    for i, g in group_of.items():
        if not (np.isfinite(pred[i]).all() and np.isfinite(true[i]).all()):
            continue
        own = np.linalg.norm(pred[i] - true[i])
        others = [np.linalg.norm(pred[i] - true[j]) for j, h in group_of.items() if h != g and np.isfinite(true[j]).all()]
        out[i] = float(bool(others) and min(others) < own)
    return out


def measure(per_point_csv: Path, groups: dict, occluded: dict[str, list[int]] | None, unit_mm: str) -> dict:
    """Figures of one evaluation: all landmarks and (where ``occluded``) the occluded ones only."""
    with open(per_point_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["id"], []).append(r)
    err256, errpx, errmm, wrong, is_occluded = [], [], [], [], []
    for image_id, points in by_image.items():
        points.sort(key=lambda r: int(r["landmark"]))
        pred = np.array([[float(r["pred_x"]), float(r["pred_y"])] for r in points])
        true = np.array([[float(r["true_x"]), float(r["true_y"])] for r in points])
        err256 += [float(r["error_px256"]) for r in points]
        errpx += [float(r["error_px"]) for r in points]
        errmm += [float(r.get(f"error_{unit_mm}", "nan") or "nan") for r in points]
        wrong += list(wrong_group(pred, true, groups))
        hidden = set((occluded or {}).get(image_id, []))
        is_occluded += [int(r["landmark"]) in hidden for r in points]
    err256, errpx, errmm, wrong, is_occluded = map(np.asarray, (err256, errpx, errmm, wrong, is_occluded))
    num_images = len(by_image)

    def figures(keep: np.ndarray) -> dict:
        e, w = err256[keep], wrong[keep]
        e, finite = e[np.isfinite(e)], np.isfinite(w)
        return {
            "num_landmarks": int(len(e)),
            "mean_px256": float(e.mean()) if len(e) else math.nan,
            "median_px256": float(np.median(e)) if len(e) else math.nan,
            "mean_px": float(np.nanmean(errpx[keep])) if keep.any() else math.nan,
            f"mean_{unit_mm}": float(np.nanmean(errmm[keep])) if np.isfinite(errmm[keep]).any() else math.nan,
            "outliers_px256_10_per_image": float((e > 10.0).sum()) / max(num_images, 1),
            "outlier_percent_px256_10": 100.0 * float((e > 10.0).mean()) if len(e) else math.nan,
            "wrong_group_percent": 100.0 * float(w[finite].mean()) if finite.any() else math.nan,
            "wrong_group_count": int(w[finite].sum()),
        }

    result = {"all": figures(np.ones(len(err256), dtype=bool))}
    if occluded is not None:
        result["occluded"] = figures(is_occluded)
    return result


# ------------------------------------------------------------------------------------------ train, evaluate


def train(method: str, seed: int, dataset_dir: Path, overlay: str, budget: float, out: Path, args) -> Path:
    """Train ``method`` with ``real_hand.py`` (one seed, checkpoint selected on its tuning subset carved
    from ``train``) at a wall-clock budget; return the seed's folder (``models/model.pt``, ``result.json``)."""
    cmd = real_hand_command(method, dataset_dir, budget, overlay, out, seed, args.threads, args.override,
                            args.learning_rate)
    cmd += args.real_hand_arg
    print(f"\n=== train {method} seed {seed}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out / f"seed{seed}"


def evaluate(method: str, ckpt: Path, dataset_dir: Path, split: str, overlay: str, reference_image, eval_dir: Path) -> Path:
    """Evaluate a checkpoint with train.json, the data overlay, the method's overlays and evaluate.json (and the
    method's overrides, e.g. its network_def); return ``per_point.csv``."""
    from monai.bundle import ConfigWorkflow

    _, method_overlays, method_overrides = METHODS[method]
    overrides = {key: json.loads(value) for key, _, value in (item.partition("=") for item in method_overrides)}
    overrides.update({"dataset_dir": str(dataset_dir), "split": split, "eval_dir": str(eval_dir),
                      "ckpt_path": str(ckpt), "ckpt_dir": str(ckpt.parent), "reference_image": reference_image})
    files = ["configs/train.json", overlay, *method_overlays, "configs/evaluate.json"]
    os.chdir(ROOT)
    workflow = ConfigWorkflow(config_file=[str(ROOT / f) for f in files],
                              workflow_type="eval", meta_file=str(ROOT / "configs" / "metadata.json"), **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return eval_dir / "per_point.csv"


def reference_image_of(dataset_dir: Path, overlay: str) -> str | None:
    """The overlay's histogram-matching reference inside the *original* dataset folder (or None)."""
    name = json.loads((ROOT / overlay).read_text()).get("reference_image_file")
    return str(dataset_dir / name) if name else None


def run_dataset(dataset: str, args, out: Path) -> list[dict]:
    spec = DATASETS[dataset]
    overlay = spec["overlay"]
    if dataset == "hand":
        dataset_dir = Path(args.dataset_dir).resolve()
        if not (dataset_dir / "landmarks.csv").is_file():
            print(f"occlusion: hand data not found at {dataset_dir}; skipping the hand dataset.", flush=True)
            return []
        eval_split, budget, unit_mm = args.hand_eval_split, args.budget_minutes, "nmm"
    else:
        dataset_dir = generate_demo_dataset(out / "data" / "clean", **LIMB_DATA)
        eval_split, budget, unit_mm = "test", args.limb_budget_minutes, "mm"
    reference = reference_image_of(dataset_dir, overlay)

    folders: dict[str, tuple[Path, dict | None]] = {"clean": (dataset_dir, None)}
    for condition in spec["conditions"][1:]:
        target = out / "data" / condition
        if dataset == "lower_limb" and condition == "implant":
            target = generate_demo_dataset(target, implants=LIMB_IMPLANTS, **LIMB_DATA)
            ids = [str(item["id"]) for item in LandmarkDataset(str(target)).datalist(eval_split)]
            occluded = {i: list(LIMB_IMPLANTED_LANDMARKS) for i in ids}
        else:
            occluded = write_occluded_dataset(dataset_dir, eval_split, condition, dataset, target)
        folders[condition] = (target, occluded)

    rows = []
    for method in args.methods:
        for seed in args.seeds:
            run_dir = out / "train" / method / f"seed{seed}"
            if not args.skip_training:
                train(method, seed, dataset_dir, overlay, budget, run_dir.parent, args)
            ckpt = run_dir / "models" / "model.pt"
            if not ckpt.is_file():
                raise SystemExit(f"occlusion: no checkpoint {ckpt}; train first (drop --skip-training).")
            result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
            for condition, (folder, occluded) in folders.items():
                per_point = evaluate(method, ckpt, folder, eval_split, overlay, reference,
                                     out / "eval" / f"{method}_seed{seed}" / condition)
                figures = measure(per_point, spec["groups"], occluded, unit_mm)
                if condition == "clean":  # the landmarks each occluder hides, seen without it
                    for other, (_, hidden) in list(folders.items())[1:]:
                        figures[f"occluded_by_{other}"] = measure(per_point, spec["groups"], hidden, unit_mm)["occluded"]
                for part, values in figures.items():
                    rows.append({"dataset": dataset, "method": method, "seed": seed, "condition": condition,
                                 "landmarks": part, "train_minutes": result.get("train_minutes"),
                                 "iterations": result.get("iterations"), **values})
                write_csv(out / "runs.csv", rows)
    return rows


def table(rows: list[dict], dataset: str, unit_mm: str) -> str:
    """Markdown table: mean ± sd over seeds per method and condition; in brackets, the occluded landmarks
    only, and the same landmarks on the clean images."""
    def stat(values):
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return "n/a"
        return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"

    lines = [
        f"| method | condition | seeds | IPE px@256 (occluded landmarks; same, clean) | median px@256 | {unit_mm} mean | "
        "outliers >10 px@256 per image (%) | wrong finger/side % (occluded landmarks; same, clean) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["method"], r["condition"]) for r in rows if r["dataset"] == dataset},
                  key=lambda k: (list(METHODS).index(k[0]), DATASETS[dataset]["conditions"].index(k[1])))
    for method, condition in keys:
        sel = [r for r in rows if (r["dataset"], r["method"], r["condition"]) == (dataset, method, condition)]
        every = [r for r in sel if r["landmarks"] == "all"]
        hidden = [r for r in sel if r["landmarks"] == "occluded"]
        clean = [r for r in rows if (r["dataset"], r["method"], r["condition"], r["landmarks"])
                 == (dataset, method, "clean", f"occluded_by_{condition}")]

        def occ(key):
            if not hidden:
                return ""
            return f" ({stat([r[key] for r in hidden])}; clean {stat([r[key] for r in clean])})"
        lines.append(
            f"| {METHODS[method][0]} | {condition} | {len(every)} | {stat([r['mean_px256'] for r in every])}{occ('mean_px256')} | "
            f"{stat([r['median_px256'] for r in every])} | {stat([r.get(f'mean_{unit_mm}') for r in every])} | "
            f"{stat([r['outliers_px256_10_per_image'] for r in every])} ({stat([r['outlier_percent_px256_10'] for r in every])}) | "
            f"{stat([r['wrong_group_percent'] for r in every])}{occ('wrong_group_percent')} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="hand,lower_limb", help="comma list of hand, lower_limb")
    p.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "hand-ipilab"), help="hand data")
    p.add_argument("--hand-eval-split", default="valid", help="split of the hand data to evaluate (clean and occluded)")
    p.add_argument("--budget-minutes", type=float, default=8.0, help="training wall clock per method and seed, hand")
    p.add_argument("--limb-budget-minutes", type=float, default=4.0, help="the same for the synthetic lower limb")
    p.add_argument("--methods", default="scn,hourglass,hourglass_adv", help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--seeds", default="0,1", help="comma list of seeds (set_determinism of every training)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of every training")
    p.add_argument("--learning-rate", type=float, default=COMPARISON_LEARNING_RATE,
                   help="Adam rate of every training (default: the rate of the model card's occlusion table)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=JSON", help="passed to every training")
    p.add_argument("--real-hand-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for benchmarks/real_hand.py (repeat for several)")
    p.add_argument("--skip-training", action="store_true", help="evaluate the checkpoints already under --out")
    p.add_argument("--out", default=str(ROOT / "bench_out" / "occlusion"))
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if unknown or any(d not in DATASETS for d in datasets) or not args.seeds:
        p.error(f"methods from {list(METHODS)}, datasets from {list(DATASETS)}, at least one seed")
    args.datasets = datasets
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    start = time.perf_counter()
    rows: list[dict] = []
    budgets = {"hand": args.budget_minutes, "lower_limb": args.limb_budget_minutes}
    text = [f"Occlusion benchmark: {', '.join(f'{budgets[d]:g} min ({d})' for d in args.datasets)} of training per "
            f"method and seed, seeds {args.seeds}, threads {args.threads or 'default'}."]
    for dataset in args.datasets:
        found = run_dataset(dataset, args, out / dataset)
        rows += found
        if found:
            unit_mm = "nmm" if dataset == "hand" else "mm"
            split = args.hand_eval_split if dataset == "hand" else "test"
            text += ["", f"Dataset `{dataset}`, split `{split}`:", "", table(found, dataset, unit_mm)]
    if rows:
        write_csv(out / "runs.csv", rows)
    write_text(out / "occlusion.md", "\n".join(text) + "\n")
    print("\n" + "\n".join(text))
    print(f"\nocclusion: {(time.perf_counter() - start) / 60:.1f} min in all; tables in {out / 'occlusion.md'}")
    return rows


if __name__ == "__main__":
    main()
