"""Inference-time choices measured on a trained checkpoint, side by side: decoder, test-time augmentation, bf16.

Takes a finished ``benchmarks/real_hand.py`` seed folder (its ``result.json`` gives the configs and
overrides the model was trained with, its ``models/model.pt`` the checkpoint selected on the tuning
subset) and evaluates that one checkpoint with ``configs/evaluate.json`` on

* ``tune``: the tuning subset carved from ``train`` (the split on which a choice may be made), and
* every held-out split the run reported (``valid``, ...), for the record only,

once per variant: the decoder (``parabola``, ``gaussian_fit``), ``--tta`` (``scripts.inferers.AffineTTAInferer``
with its default 5 passes) and ``--amp`` (bf16 autocast, where the CPU has it, against fp32). No training is
run, so the rows differ only in what they name. A choice (e.g. turning TTA on by default) is made on the
``tune`` rows; the ``valid`` rows then report it.

Usage::

    python benchmarks/eval_variants.py bench_out/hand60/seed0 [bench_out/hand60/seed1 ...] --out bench_out/hand60/variants.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scripts.heatmap  # noqa: E402
from benchmarks.real_hand import evaluate_checkpoint  # noqa: E402
from scripts.utils import bf16_is_fast  # noqa: E402

#: figures of an evaluation summary that the table shows
FIGURES = ("ipe_px256", "outliers_px256_10", "mean_nmm")


def evaluate(run: dict, seed_dir: Path, split: str, decoder: str, tta: bool, amp: bool) -> dict:
    """Evaluate ``seed_dir/models/model.pt`` on ``split`` (``tune``: the tuning subset) with one variant."""
    name = f"{split}_{decoder}{'_tta' if tta else ''}{'_bf16' if amp else '_fp32'}"
    overrides = {**run["overrides"], "ckpt_dir": str(seed_dir / "models"), "split": split, "tta": tta, "amp": amp}
    if split == "tune":
        # the tuning subset as training carved it (val_datalist, with the run's tune_fraction)
        overrides["validate#dataset#data"] = "@val_datalist"
    start = time.perf_counter()
    summary = evaluate_checkpoint(run["config"], overrides, seed_dir / "variants" / name, decoder)
    return {"split": split, "decoder": decoder, "tta": tta, "amp": amp, "seconds": time.perf_counter() - start,
            "num_images": summary["num_images"], **{k: summary.get(k) for k in FIGURES}}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("seed_dirs", nargs="+", type=Path, help="real_hand.py seed folders (with result.json)")
    p.add_argument("--splits", default="tune,valid", help="comma-separated; tune = the tuning subset")
    p.add_argument("--decoders", default=",".join(scripts.heatmap.DECODE_METHODS))
    p.add_argument("--out", type=Path, help="JSON file for the rows")
    args = p.parse_args(argv)
    amps = [False, True] if bf16_is_fast("cpu") else [False]
    rows = []
    for seed_dir in args.seed_dirs:
        seed_dir = seed_dir.resolve()
        run = json.loads((seed_dir / "result.json").read_text())
        for split, decoder, tta, amp in itertools.product(args.splits.split(","), args.decoders.split(","),
                                                          (False, True), amps):
            row = {"seed": run["seed"], **evaluate(run, seed_dir, split, decoder, tta, amp)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| split | decoder | TTA | autocast | IPE px@256 (mean over seeds; per seed) | outliers >10 px@256 / image | s per evaluation |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key, group in itertools.groupby(sorted(rows, key=lambda r: (r["split"], r["decoder"], r["tta"], r["amp"])),
                                        key=lambda r: (r["split"], r["decoder"], r["tta"], r["amp"])):
        group = list(group)
        ipe = [r["ipe_px256"] for r in group]
        out = [r["outliers_px256_10"] for r in group]
        print(f"| {key[0]} | {key[1]} | {'5 passes' if key[2] else 'off'} | {'bf16' if key[3] else 'fp32'} | "
              f"{statistics.fmean(ipe):.3f}; " + ", ".join(f"{v:.3f}" for v in ipe)
              + f" | {statistics.fmean(out):.3f} | {statistics.fmean(r['seconds'] for r in group):.0f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
