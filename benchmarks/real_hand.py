"""Real-data benchmark of the SCN on the hand radiographs (hand-ipilab format) under a wall-clock budget.

Trains with ``configs/train.json`` (preset ``hand``) on split ``train``, validates on ``valid`` every
epoch and keeps the best checkpoint, stops at the last epoch end that keeps within the budget, then evaluates the best checkpoint
with ``configs/evaluate.json`` on every split of ``splits.csv`` other than ``train`` (a held-out split
added there is measured too). Writes, under ``--out``:

* ``learning_curve.csv`` / ``learning_curve.png``: validation error against training minutes
  (network grid px, which is px@256 for the 256x256 preset, and original px);
* ``budgets.csv``: the best validation error reached within each budget in ``--report-minutes``;
* ``eval/<split>/``: the full evaluation report (CSVs, summary.json, cumulative-error plots);
* ``models/``: ``model.pt`` (best on valid) and ``last.ckpt``.

Example (60 CPU minutes)::

    python benchmarks/real_hand.py --dataset_dir ../shared/data/hand-ipilab --budget-minutes 60 --out bench_out/hand
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402
import torch  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from ignite.engine import Events  # noqa: E402
from monai.bundle import ConfigWorkflow  # noqa: E402

from scripts.data import LandmarkDataset  # noqa: E402
from scripts.evaluation import write_csv  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "hand-ipilab"))
    p.add_argument("--budget-minutes", type=float, default=60.0, help="wall-clock training budget")
    p.add_argument("--out", default=str(ROOT / "bench_out" / "hand"))
    p.add_argument("--config", default="configs/train.json",
                   help="training config, relative to the bundle root (e.g. configs/train_adversarial.json)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--preset", default="hand")
    p.add_argument("--num-filters", type=int, default=64)
    p.add_argument("--sigma", type=float, default=None, help="heatmap sigma (network px); preset value if unset")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--report-minutes", default="10,20,30,45,60,90,120", help="budgets to report, minutes")
    p.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                   help="extra config override, e.g. --override learnable_sigma=true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = {
        "preset": args.preset,
        "dataset_dir": str(Path(args.dataset_dir).resolve()),
        "ckpt_dir": str(out / "models"),
        "output_dir": str(out / "runs"),
        "num_filters": args.num_filters,
        "learning_rate": args.learning_rate,
        "max_epochs": 100000,
        "val_interval": 1,
    }
    if args.sigma is not None:
        overrides[f"presets#{args.preset}#sigma"] = args.sigma
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)

    os.chdir(ROOT)  # configs/train_adversarial.json reads train.json through paths relative to the bundle root
    train = ConfigWorkflow(config_file=str(ROOT / args.config), workflow_type="train",
                           meta_file=str(ROOT / "configs" / "metadata.json"), **overrides)
    train.initialize()
    trainer = train.parser.get_parsed_content("train#trainer")
    evaluator = train.parser.get_parsed_content("validate#evaluator")

    budget_s = args.budget_minutes * 60.0
    start = time.perf_counter()
    curve: list[dict] = []

    epoch_start = [start]

    @trainer.on(Events.EPOCH_COMPLETED)
    def stop_within_budget(engine):
        # after this epoch's validation: stop if another epoch would overrun the budget
        now = time.perf_counter()
        if now - start + (now - epoch_start[0]) > budget_s:
            engine.terminate()
        epoch_start[0] = now

    @evaluator.on(Events.EPOCH_COMPLETED)
    def record(engine):
        m = engine.state.metrics
        curve.append({
            "minutes": (time.perf_counter() - start) / 60.0,
            "epoch": trainer.state.epoch,
            "iteration": trainer.state.iteration,
            "val_mean_error_net_px": m["val_mean_error_px"],
            "val_mean_error_orig_px": m["val_mean_error_orig_px"],
        })
        _write_curve(out, curve)

    train.run()
    train.finalize()
    train_minutes = (time.perf_counter() - start) / 60.0

    budgets = []
    for minutes in (float(m) for m in args.report_minutes.split(",")):
        reached = [c for c in curve if c["minutes"] <= minutes]
        if reached and minutes <= train_minutes + 1e-6:
            best = min(reached, key=lambda c: c["val_mean_error_net_px"])
            budgets.append({"budget_minutes": minutes, **best})
    write_csv(out / "budgets.csv", budgets)

    # evaluation always runs train.json + evaluate.json; another training config's generator comes along
    eval_overrides = {**overrides, "network_def": train.parser.get("network_def")}
    splits = [s for s in LandmarkDataset(overrides["dataset_dir"]).split_names() if s != "train"]
    summaries = {}
    for split in splits:
        ev = ConfigWorkflow(
            config_file=[str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "evaluate.json")],
            workflow_type="eval", meta_file=str(ROOT / "configs" / "metadata.json"),
            **{**eval_overrides, "split": split, "eval_dir": str(out / "eval" / split)},
        )
        ev.initialize()
        ev.run()
        ev.finalize()
        summaries[split] = json.loads((out / "eval" / split / "summary.json").read_text())

    result = {"config": args.config, "threads": torch.get_num_threads(), "train_minutes": train_minutes, "epochs": trainer.state.epoch, "iterations": trainer.state.iteration,
              "overrides": overrides, "budgets": budgets, "splits": summaries}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"\ntrained {train_minutes:.1f} min, {trainer.state.epoch} epochs, {trainer.state.iteration} iterations")
    for b in budgets:
        print(f"budget {b['budget_minutes']:>5.0f} min: best valid error {b['val_mean_error_net_px']:.3f} net px "
              f"({b['val_mean_error_orig_px']:.2f} orig px) at {b['minutes']:.1f} min, epoch {b['epoch']}")
    for split, s in summaries.items():
        line = (f"{split}: IPE {s['ipe_px256']:.3f} px@256, outliers(>10 px@256) {s['outliers_px256_10']:.2f}/image "
                f"({s['outlier_percent_px256_10']:.2f} %), PE {s['mean_px']:.2f} ± {s['std_px']:.2f} px "
                f"(median {s['median_px']:.2f})")
        if s.get("mean_nmm") is not None:
            line += (f", {s['mean_nmm']:.2f} ± {s['std_nmm']:.2f} nmm, SDR 2/4/10 nmm "
                     f"{100 * s['sdr_nmm_2']:.1f}/{100 * s['sdr_nmm_4']:.1f}/{100 * s['sdr_nmm_10']:.1f} %")
        print(line)
    return result


def _write_curve(out: Path, curve: list[dict]) -> None:
    write_csv(out / "learning_curve.csv", curve)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["minutes"] for c in curve], [c["val_mean_error_net_px"] for c in curve], marker="o")
    ax.set_xlabel("training wall-clock (minutes)")
    ax.set_ylabel("valid mean point error (network px)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
