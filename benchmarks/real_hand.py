"""Real-data benchmark on the hand radiographs (hand-ipilab format) under a wall-clock budget, honest protocol.

Protocol (issue #9): the checkpoint is selected on a *tuning subset carved from* ``train``
(``--tune-fraction``, by a stable hash of the id: 0.11 gives 10 of the 91 images, see
``scripts.data.split_off_tuning``), never on the split that is reported; the model trains on the
rest of ``train``. The best checkpoint (on the tuning subset) is then evaluated with
``configs/evaluate.json`` on ``valid`` and on every other split of ``splits.csv`` except ``train``,
which are untouched held-out data. Every setting runs once per seed (``--seeds``); the summary gives
the mean and spread over seeds.

The budget is a first-class training option: ``--budget-minutes`` sets the config's ``max_minutes``
(minus the time spent before the trainer starts, e.g. caching), and ``--lr-schedule`` (default
``cosine``, after a linear warm-up) is driven by the elapsed fraction of it, so every run ends with
a finished schedule (``scripts.handlers.BudgetLrSchedule``). Configs without that handler
stop at the last epoch end that fits, as before. ``--budget-epochs`` trains a fixed number of epochs instead (the
schedule then runs over the iterations): recipes compared that way get the same steps whatever the machine's speed,
which a budget in minutes on a shared CPU does not give them.

Configs: ``configs/train.json``, then the data overlay (``--data-overlay``, default ``configs/hand.json``),
then the method overlays (``--overlay configs/adversarial.json`` for Adversarial PoseNet); evaluation
merges the same files and ``configs/evaluate.json``.

Writes, under ``--out``/``seed<k>``:

* ``learning_curve.csv`` / ``learning_curve.png``: tuning-subset error against training minutes;
* ``budgets.csv``: the best tuning-subset error reached within each budget in ``--report-minutes``;
* ``eval/<split>/``: the full evaluation report, decoded as the configs say (``decode_method``: the window Gaussian
  fit for ``hand.json``, the parabola otherwise), with test-time augmentation when ``--tta`` is given; the same
  checkpoint is also evaluated with the other decoder (``eval/<split>_<decoder>/``) and, with ``--tta``, without it
  (``eval/<split>_no_tta/``), for the record;
* ``models/``: ``model.pt`` (best on the tuning subset) and ``last.ckpt``;

and ``--out``/``summary.json`` with every seed and the mean / SD / min / max over seeds.

Example (the lead's 60-minute run, 2 seeds, alone on the machine)::

    python benchmarks/real_hand.py --dataset_dir ../shared/data/hand-ipilab --budget-minutes 60 --seeds 0,1 --tta --out bench_out/hand60

``benchmarks/ablation.py`` prints the command of every ablation row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

import scripts.heatmap  # noqa: E402
from benchmarks.machine import describe, load_average  # noqa: E402
from scripts.data import LandmarkDataset  # noqa: E402
from scripts.writers.files import write_csv  # noqa: E402

#: per-split figures of summary.json that are aggregated over seeds
FIGURES = ("ipe_px256", "median_px256", "outliers_px256_10", "mean_px", "mean_nmm")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "hand-ipilab"))
    p.add_argument("--budget-minutes", type=float, default=60.0, help="wall-clock budget per seed (training)")
    p.add_argument("--budget-epochs", type=int, default=None,
                   help="train this many epochs per seed instead of a wall-clock budget (equal iterations per recipe)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds, one run each (>= 2 for a spread)")
    p.add_argument("--tune-fraction", type=float, default=0.11,
                   help="fraction of train held out for checkpoint selection (0.11: 10 of 91)")
    p.add_argument("--out", default=str(ROOT / "bench_out" / "hand"))
    p.add_argument("--data-overlay", default="configs/hand.json",
                   help="data overlay merged after configs/train.json ('none': the default demo contract)")
    p.add_argument("--overlay", action="append", default=[], metavar="FILE",
                   help="method overlay merged after the data overlay, e.g. configs/adversarial.json (repeatable)")
    p.add_argument("--config", help=argparse.SUPPRESS)  # removed: gives the new form
    p.add_argument("--preset", help=argparse.SUPPRESS)  # removed: gives the new form
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--num-filters", type=int, default=64)
    p.add_argument("--sigma", type=float, default=None, help="heatmap sigma (network px); the overlay's if unset")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="Adam rate, replacing the config's (unset: the overlays' own, 3e-4 for hand.json)")
    p.add_argument("--lr-schedule", default="cosine", choices=("cosine", "linear", "none"),
                   help="schedule over the budget (none: constant learning rate)")
    p.add_argument("--val-interval", type=int, default=1, help="epochs between validations on the tuning subset")
    p.add_argument("--report-minutes", default="10,20,30,45,60,90,120", help="budgets to report, minutes")
    p.add_argument("--tta", action="store_true",
                   help="evaluate the selected checkpoint with test-time augmentation (configs/evaluate.json's tta)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                   help="extra config override, e.g. --override learnable_sigma=true --override scn_variant='\"fast\"'")
    args = p.parse_args(argv)
    if args.preset is not None:
        p.error(f"--preset was removed: use --data-overlay configs/{args.preset}.json (none for demo_hand)")
    if args.budget_epochs is not None:
        if args.budget_epochs < 1:
            p.error(f"--budget-epochs must be at least 1, got {args.budget_epochs}")
        args.budget_minutes = None  # no wall-clock budget
    if args.config is not None:
        p.error("--config was removed: configs/train.json is always first; add method overlays with --overlay, "
                "e.g. --overlay configs/adversarial.json (for configs/train_adversarial.json)")
    return args


def config_files(args, *last: str) -> list[str]:
    """configs/train.json, the data overlay, the method overlays, then ``last``, as absolute paths."""
    data = [] if args.data_overlay in ("", "none") else [args.data_overlay]
    return [str(ROOT / f) for f in ["configs/train.json", *data, *args.overlay, *last]]


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out).resolve()
    runs = [run_seed(args, seed, out / f"seed{seed}") for seed in seeds]
    summary = {"config": config_files(args), "budget_minutes": args.budget_minutes,
               "budget_epochs": args.budget_epochs, "tune_fraction": args.tune_fraction,
               "seeds": seeds, "runs": runs, "over_seeds": aggregate(runs)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n=== {len(seeds)} seed(s), checkpoint selected on {runs[0]['num_tune']} tuning images carved from train; "
          "held-out splits never used for selection ===")
    for split, figures in summary["over_seeds"].items():
        for name, stats in figures.items():
            print(f"{split:>16} {name:<18} mean {stats['mean']:.3f}  SD {stats['sd']:.3f}  "
                  f"min {stats['min']:.3f}  max {stats['max']:.3f}  (per seed: "
                  + ", ".join(f"{v:.3f}" for v in stats["values"]) + ")")
    print(f"summary: {out / 'summary.json'}")
    return summary


#: config keys that make up a training recipe: runs merged into one summary must agree on all of them
RECIPE_KEYS = ("scn_variant", "spatial_size", "keep_aspect", "sigma", "learnable_sigma", "num_filters", "batch_size",
               "learning_rate", "lr_schedule", "warmup_fraction", "max_minutes", "max_epochs", "tune_fraction",
               "ema_decay", "ema_warmup", "grad_clip_norm", "decode_method")
#: recipe keys added after runs were recorded, with the value every earlier run had
RECIPE_DEFAULTS = {"decode_method": "parabola", "max_epochs": 100000, "ema_warmup": False}


def parser_recipe(parser) -> dict:
    """The :data:`RECIPE_KEYS` values of a resolved training config (a MONAI ``ConfigParser``)."""
    return {key: parser.get_parsed_content(key) for key in RECIPE_KEYS}


def recipe(config_files: list[str], overrides: dict) -> dict:
    """The :data:`RECIPE_KEYS` values that ``config_files`` (names looked up in this bundle's ``configs/``) with
    ``overrides`` resolve to today."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / Path(f).name) for f in config_files])
    for key, value in overrides.items():
        parser[key] = value
    return parser_recipe(parser)


def merge_summaries(summaries: list[dict]) -> dict:
    """One summary of the seeds of several ``summary.json`` files, e.g. one seed per run in different sessions.

    Raises ``ValueError`` when their runs differ in the training recipe each recorded in ``result.json``, ran on
    different machines (CPU model or bf16 support, where recorded: a time budget buys another number of steps), repeat a
    seed, or have no recorded recipe (runs from before it was recorded: resolving their overrides against today's
    configs would give today's defaults, e.g. ``hand.json``'s weight average, not the ones they trained with)."""
    runs = sorted((run for s in summaries for run in s["runs"]), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the summaries repeat a seed: {seeds}")
    unrecorded = [r["seed"] for r in runs if "recipe" not in r]
    if unrecorded:
        raise ValueError(f"seeds {unrecorded} have no recorded recipe (runs of real_hand.py before bundle 0.3.2); "
                         "add the recipe they trained to their runs entry of summary.json")
    recipes = [{**RECIPE_DEFAULTS, **r["recipe"]} for r in runs]
    for run, other in zip(runs[1:], recipes[1:]):
        changed = {k: (recipes[0][k], other[k]) for k in RECIPE_KEYS if other[k] != recipes[0][k]}
        if changed:
            raise ValueError(f"seed {run['seed']} has another recipe than seed {seeds[0]}: {changed}")
    machines = {(r["machine"]["cpu"], r["machine"]["bf16_is_fast"]) for r in runs if "machine" in r}
    if len(machines) > 1:
        raise ValueError(f"the seeds ran on different machines, so their iterations per minute differ: {sorted(machines)}")
    first = summaries[0]
    return {"config": first["config"], "budget_minutes": first["budget_minutes"],
            "budget_epochs": first.get("budget_epochs"), "tune_fraction": first["tune_fraction"],
            "seeds": seeds, "runs": runs, "over_seeds": aggregate(runs), "recipe": recipes[0]}


def aggregate(runs: list[dict]) -> dict:
    """Mean, SD (0 for one seed), min and max over seeds of :data:`FIGURES` per evaluated split."""
    result: dict = {}
    for split in runs[0]["splits"]:
        for name in FIGURES:
            values = [r["splits"][split].get(name) for r in runs]
            if any(v is None for v in values):
                continue
            result.setdefault(split, {})[name] = {
                "mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values), "values": values}
    return result


def training_overrides(args, seed: int, out: Path) -> dict:
    """The config overrides of one seed's training run (``--override`` items last, so they win)."""
    overrides = {
        "dataset_dir": str(Path(args.dataset_dir).resolve()),
        "ckpt_dir": str(out / "models"),
        "output_dir": str(out / "runs"),
        "num_filters": args.num_filters,
        # a wall-clock budget ends the run (max_epochs only bounds it), or a number of epochs does
        "max_epochs": args.budget_epochs or 100000,
        "val_interval": args.val_interval,
        "tune_fraction": args.tune_fraction,
        "max_minutes": args.budget_minutes,
        "lr_schedule": args.lr_schedule,
        "seed": seed,
    }
    if args.sigma is not None:
        overrides["sigma"] = args.sigma
    if args.learning_rate is not None:
        overrides["learning_rate"] = args.learning_rate
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    return overrides


def run_seed(args, seed: int, out: Path) -> dict:
    script_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    overrides = training_overrides(args, seed, out)

    os.chdir(ROOT)  # the configs' bundle_root is "."
    train = ConfigWorkflow(config_file=config_files(args), workflow_type="train",
                           meta_file=str(ROOT / "configs" / "metadata.json"), **overrides)
    train.initialize()
    machine = describe(train.parser.get_parsed_content("device"))
    trainer = train.parser.get_parsed_content("train#trainer")
    evaluator = train.parser.get_parsed_content("validate#evaluator")
    optimizer = train.parser.get_parsed_content("optimizer")
    num_tune = len(train.parser.get_parsed_content("validate#dataset#data"))

    budget_s = None if args.budget_minutes is None else args.budget_minutes * 60.0
    schedule = train.parser.get_parsed_content("budget_schedule") if "budget_schedule" in train.parser else None
    attached = schedule is not None and any(
        getattr(h, "__self__", None) is schedule for h, *_ in trainer._event_handlers[Events.ITERATION_COMPLETED])
    if attached and budget_s is not None:
        # the budget covers this whole run: what was spent before the trainer starts (caching) counts too
        schedule.budget_s = budget_s - (time.perf_counter() - script_start)
    curve: list[dict] = []
    start = time.perf_counter()
    epoch_start = [start]

    if not attached and budget_s is not None:
        @trainer.on(Events.EPOCH_COMPLETED)
        def stop_within_budget(engine):
            # after this epoch's validation: stop if another epoch would overrun the budget
            now = time.perf_counter()
            if now - script_start + (now - epoch_start[0]) > budget_s:
                engine.terminate()
            epoch_start[0] = now

    @evaluator.on(Events.EPOCH_COMPLETED)
    def record(engine):
        m = engine.state.metrics
        curve.append({
            "minutes": (time.perf_counter() - start) / 60.0,
            "epoch": trainer.state.epoch,
            "iteration": trainer.state.iteration,
            "lr": optimizer.param_groups[0]["lr"],
            "tune_mean_error_net_px": m["val_mean_error_px"],
            "tune_mean_error_orig_px": m["val_mean_error_orig_px"],
        })
        _write_curve(out, curve)

    train.run()
    train.finalize()
    machine["load_average_end_of_training"] = load_average()
    train_minutes = (time.perf_counter() - start) / 60.0
    wall_minutes = (time.perf_counter() - script_start) / 60.0

    budgets = []
    for minutes in (float(m) for m in args.report_minutes.split(",")):
        reached = [c for c in curve if c["minutes"] <= minutes]
        # the run's own budget counts as reached: training ends a few seconds short of it (setup is inside it)
        if reached and minutes <= max(train_minutes, args.budget_minutes or 0.0) + 1e-6:
            best = min(reached, key=lambda c: c["tune_mean_error_net_px"])
            budgets.append({"budget_minutes": minutes, **best})
    write_csv(out / "budgets.csv", budgets)

    splits = [s for s in LandmarkDataset(overrides["dataset_dir"]).split_names() if s != "train"]
    decoder = train.parser.get_parsed_content("decode_method")
    summaries = {}
    for split in splits:
        for name, variant_decoder, tta in evaluation_variants(split, decoder, args.tta):
            summaries[name] = evaluate_checkpoint(config_files(args), {**overrides, "split": split},
                                                  out / "eval" / name, variant_decoder, tta)

    result = {"seed": seed, "config": config_files(args), "threads": torch.get_num_threads(), "machine": machine,
              "num_tune": num_tune,
              "train_minutes": train_minutes, "wall_minutes_to_end_of_training": wall_minutes,
              "ended_by_budget_schedule": bool(attached and schedule.ended_by_budget),
              "epochs": trainer.state.epoch, "iterations": trainer.state.iteration,
              "overrides": overrides, "recipe": parser_recipe(train.parser), "tta": args.tta,
              "budgets": budgets, "splits": summaries}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    loads = [f"{v:.2f}" if v is not None else "n/a" for v in (machine["load_average"], machine["load_average_end_of_training"])]
    print(f"\nseed {seed} on {machine['cpu']} (bf16 fast: {machine['bf16_is_fast']}; load average "
          f"{loads[0]} at the start, {loads[1]} at the end of training)")
    print(f"seed {seed}: trained {train_minutes:.1f} min ({wall_minutes:.1f} min wall clock with setup), "
          f"{trainer.state.epoch} epochs, {trainer.state.iteration} iterations; selection on {num_tune} tuning images")
    for b in budgets:
        print(f"budget {b['budget_minutes']:>5.0f} min: best tuning error {b['tune_mean_error_net_px']:.3f} net px "
              f"({b['tune_mean_error_orig_px']:.2f} orig px) at {b['minutes']:.1f} min, epoch {b['epoch']}")
    print(f"evaluation reported as <split>: {decoder} decoder, test-time augmentation {'on' if args.tta else 'off'}")
    for split, s in summaries.items():
        line = (f"{split}: IPE {s['ipe_px256']:.3f} px@256, outliers(>10 px@256) {s['outliers_px256_10']:.2f}/image "
                f"({s['outlier_percent_px256_10']:.2f} %), PE {s['mean_px']:.2f} ± {s['std_px']:.2f} px "
                f"(median {s['median_px']:.2f})")
        if s.get("mean_nmm") is not None:
            line += (f", {s['mean_nmm']:.2f} ± {s['std_nmm']:.2f} nmm, SDR 2/4/10 nmm "
                     f"{100 * s['sdr_nmm_2']:.1f}/{100 * s['sdr_nmm_4']:.1f}/{100 * s['sdr_nmm_10']:.1f} %")
        print(line)
    return result


def evaluation_variants(split: str, decoder: str, tta: bool) -> list[tuple[str, str, bool]]:
    """``(name, decoder, tta)`` of each evaluation of ``split``: first the reported one (``split``: the configured
    ``decoder``, with ``tta`` as given), then for the record the other decoders (``<split>_<decoder>``, same ``tta``)
    and, where ``tta``, the configured decoder without it (``<split>_no_tta``)."""
    variants = [(split, decoder, tta)]
    variants += [(f"{split}_{other}", other, tta) for other in scripts.heatmap.DECODE_METHODS if other != decoder]
    if tta:
        variants.append((f"{split}_no_tta", decoder, False))
    return variants


def evaluate_checkpoint(configs: list[str], overrides: dict, eval_dir: Path, decoder: str | None = None,
                        tta: bool | None = None) -> dict:
    """Run ``configs`` + ``configs/evaluate.json`` with ``overrides`` (checkpoint, split, ...), decoding with
    ``decoder`` and test-time augmentation ``tta`` (``None``: as the configs and ``overrides`` say); the report goes
    to ``eval_dir`` and its ``summary.json`` is returned."""
    overrides = {**overrides, "eval_dir": str(eval_dir)}
    if decoder is not None:
        overrides["decode_method"] = decoder
    if tta is not None:
        overrides["tta"] = tta
    os.chdir(ROOT)  # the configs' bundle_root is "."
    ev = ConfigWorkflow(config_file=[*configs, str(ROOT / "configs" / "evaluate.json")], workflow_type="eval",
                        meta_file=str(ROOT / "configs" / "metadata.json"), **overrides)
    ev.initialize()
    ev.run()
    ev.finalize()
    return json.loads((Path(eval_dir) / "summary.json").read_text())


def _write_curve(out: Path, curve: list[dict]) -> None:
    write_csv(out / "learning_curve.csv", curve)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["minutes"] for c in curve], [c["tune_mean_error_net_px"] for c in curve], marker="o")
    ax.set_xlabel("training wall-clock (minutes)")
    ax.set_ylabel("tuning-subset mean point error (network px)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
