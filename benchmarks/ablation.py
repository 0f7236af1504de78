"""Ablation of the issue #9 recipe on the hand radiographs: each change alone and all combined.

Every row is one ``benchmarks/real_hand.py`` run (honest protocol: selection on 10 tuning images
carved from ``train``, report on ``valid``; ``--seeds`` seeds; ``--budget-minutes`` per seed). A row's decoder
(``decode_method``) decodes both for selection and for the report; every run also evaluates its checkpoint with the
other decoder, so the table has the window Gaussian fit's figure for every row. Test-time augmentation needs no row:
``benchmarks/eval_variants.py`` evaluates a finished row's checkpoints with and without it.

Run each row alone on the machine (a run beside another job gets about half the iterations)::

    python benchmarks/ablation.py                       # prints the commands (and the table of finished rows)
    python benchmarks/ablation.py --run baseline        # runs one row (then the next, in any order or session)
    python benchmarks/ablation.py --table               # markdown table of the rows found under --out
    python benchmarks/ablation.py --collect ROW A/summary.json B/summary.json   # seeds run one at a time
    python benchmarks/ablation.py --budget-minutes 10 --out bench_out/ablation10 --run baseline   # the short table
    python benchmarks/ablation.py --budget-epochs 30 --out bench_out/ablation_e30 --run baseline   # equal iterations

A budget in minutes measures accuracy per CPU-minute, the issue's measure, but on a CPU shared with other machines the
same minutes buy another number of steps from one hour to the next; ``--budget-epochs`` gives every row the same steps
(the schedule runs over them), so rows compare per step, independent of the machine's speed.

A row's results are ``<out>/<row>/summary.json``; a missing row shows "not run".
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the baseline: the recipe before issue #9 (the paper's network and its rate, Adam at 1e-4). Every row states all of
#: these settings, so that a default changed in an overlay (hand.json) does not change a row.
BASELINE = {"lr_schedule": "none", "learning_rate": 1e-4, "scn_variant": "paper", "keep_aspect": False,
            "learnable_sigma": False, "ema_decay": 0.0, "grad_clip_norm": 0.0, "decode_method": "parabola"}
#: hand.json's rate, chosen for the fast SCN with the cosine schedule on the tuning subset (8 min, 2 seeds)
HAND_LR = 3e-4
#: the rate of the fast SCN with GroupNorm, chosen over 3e-4 on the tuning subset (30 epochs, seed 0, with clipping)
FAST_GN_LR = 5e-4
#: the gradient-norm threshold of the clipping rows (hand.json's): about the median total norm of the fast SCN on the
#: real hands (1.5-2.4e7 per epoch), chosen over 5e7 on the tuning subset
CLIP_NORM = 2e7
#: the settings of the hand.json recipe, in the order the combination rows add them (see _recipe_up_to)
_RECIPE = {"learning_rate": HAND_LR, "lr_schedule": "cosine", "scn_variant": "fast", "ema_decay": 0.999,
           "grad_clip_norm": CLIP_NORM, "decode_method": "gaussian_fit"}


def _recipe_up_to(last: str) -> dict:
    keys = list(_RECIPE)
    return {k: _RECIPE[k] for k in keys[: keys.index(last) + 1]}


#: row name -> (what changes, the settings it changes from :data:`BASELINE`)
ROWS = {
    "baseline": ("previous recipe: paper SCN, lr 1e-4 constant, stretched 256x256, fixed sigma, no weight average", {}),
    "learning_rate": (f"+ lr {HAND_LR:g} (hand.json's rate)", {"learning_rate": HAND_LR}),
    "schedule": ("+ warm-up + cosine lr over the time budget", {"lr_schedule": "cosine"}),
    "fast_scn": ("+ fast SCN (stride-2 stem, 3x3, SC at 1/8)", {"scn_variant": "fast"}),
    "letterbox": ("+ aspect-preserving letterbox", {"keep_aspect": True}),
    "learnable_sigma": ("+ learnable sigma (normalised targets + penalty)", {"learnable_sigma": True}),
    "ema": ("+ EMA of the weights (decay 0.999) for selection and model.pt", {"ema_decay": 0.999}),
    "grad_clip": (f"+ gradient-norm clipping at {CLIP_NORM:.0e}", {"grad_clip_norm": CLIP_NORM}),
    "schedule_fast": (f"lr {HAND_LR:g} + cosine schedule + fast SCN", _recipe_up_to("scn_variant")),
    "schedule_fast_gn": (f"lr {HAND_LR:g} + cosine schedule + fast SCN with GroupNorm (scn_variant fast_gn)",
                         {**_recipe_up_to("scn_variant"), "scn_variant": "fast_gn"}),
    "fast_gn_recipe": (f"lr {FAST_GN_LR:g} + cosine schedule + fast SCN with GroupNorm + gradient-norm clipping "
                       "(fast_gn's rate, chosen on the tuning subset at 30 epochs)",
                       {**_recipe_up_to("scn_variant"), "scn_variant": "fast_gn", "learning_rate": FAST_GN_LR,
                        "grad_clip_norm": CLIP_NORM}),
    "schedule_fast_ema": (f"lr {HAND_LR:g} + cosine schedule + fast SCN + EMA", _recipe_up_to("ema_decay")),
    "schedule_fast_ema_clip": (f"lr {HAND_LR:g} + cosine schedule + fast SCN + EMA + gradient-norm clipping",
                               _recipe_up_to("grad_clip_norm")),
    "schedule_fast_ema_clip_gfit": (f"lr {HAND_LR:g} + cosine schedule + fast SCN + EMA + gradient-norm clipping + "
                                    "Gaussian-fit decoding for selection and report (the hand.json default)",
                                    _recipe_up_to("decode_method")),
    "combined": ("all of the above", {**_RECIPE, "keep_aspect": True, "learnable_sigma": True}),
}


def row_arguments(row: str) -> str:
    """The ``real_hand.py`` arguments that set every :data:`BASELINE` setting as ``row`` has it."""
    settings = {**BASELINE, **ROWS[row][1]}
    words = ["--lr-schedule", settings.pop("lr_schedule"), "--learning-rate", f"{settings.pop('learning_rate'):g}"]
    for key, value in settings.items():
        words += ["--override", f"{key}={json.dumps(value)}"]
    return shlex.join(words)


def budget_arguments(args) -> str:
    """``--budget-epochs N`` where given, else ``--budget-minutes M``."""
    if args.budget_epochs is not None:
        return f"--budget-epochs {args.budget_epochs:d}"
    return f"--budget-minutes {args.budget_minutes:g}"


def command(row: str, args) -> str:
    extra = row_arguments(row)
    return (f"python benchmarks/real_hand.py --dataset_dir {shlex.quote(args.dataset_dir)} "
            f"{budget_arguments(args)} --seeds {args.seeds} {extra} "
            f"--out {shlex.quote(str(Path(args.out) / row))}")


def _real_hand():
    """``benchmarks/real_hand.py`` as a module (imported on use: it loads torch and MONAI)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import real_hand

    return real_hand


def row_recipe(row: str, args) -> dict:
    """The training recipe (``real_hand.recipe``) that ``row``'s command trains."""
    real_hand = _real_hand()
    argv = shlex.split(command(row, args))[2:]  # after "python benchmarks/real_hand.py"
    row_args = real_hand.parse_args(argv)
    overrides = real_hand.training_overrides(row_args, 0, Path(args.out) / row / "seed0")
    return real_hand.recipe(real_hand.config_files(row_args), overrides)


def collect(row: str, summary_files: list[str], args) -> Path:
    """Merge single-seed ``real_hand.py`` summaries into ``<out>/<row>/summary.json``, after checking that every
    run trained ``row``'s recipe (same budget, rate, variant, ...), so seeds run in different sessions make one row."""
    merged = _real_hand().merge_summaries([json.loads(Path(f).read_text()) for f in summary_files])
    expected = row_recipe(row, args)
    changed = {k: (expected[k], merged["recipe"][k]) for k in expected if merged["recipe"][k] != expected[k]}
    if changed:
        raise SystemExit(f"the runs are not row {row!r} at {budget_arguments(args)} "
                         f"(row -> runs): {changed}")
    target = Path(args.out) / row / "summary.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(merged, indent=2))
    return target


def machine_name(summary: dict) -> str:
    """The CPU a row's seeds ran on (a budget buys another number of steps on another CPU), as recorded."""
    cpus = sorted({run["machine"]["cpu"] for run in summary["runs"] if "machine" in run})
    return ", ".join(cpus) or "not recorded"


def table(args) -> str:
    header = ("| row | change | valid IPE px@256 (mean ± SD over seeds) | outliers >10 px@256 / image | "
              "IPE with Gaussian-fit decoding | CPU | command |")
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for row, (what, _) in ROWS.items():
        path = Path(args.out) / row / "summary.json"
        cells = ["not run"] * 4
        if path.is_file():
            summary = json.loads(path.read_text())
            over = summary["over_seeds"]

            def cell(split, name):
                s = over.get(split, {}).get(name)
                return "n/a" if s is None else f"{s['mean']:.3f} ± {s['sd']:.3f}"

            gaussian_fit = "valid" if summary.get("recipe", {}).get("decode_method") == "gaussian_fit" else "valid_gaussian_fit"
            cells = [cell("valid", "ipe_px256"), cell("valid", "outliers_px256_10"),
                     cell(gaussian_fit, "ipe_px256"), machine_name(summary)]
        lines.append(f"| {row} | {what} | " + " | ".join(cells) + f" | `{command(row, args)}` |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", default="../shared/data/hand-ipilab")
    p.add_argument("--budget-minutes", type=float, default=60.0)
    p.add_argument("--budget-epochs", type=int, default=None, help="epochs per seed instead of --budget-minutes")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--out", default="bench_out/ablation")
    p.add_argument("--run", choices=sorted(ROWS), help="run this row now (alone on the machine)")
    p.add_argument("--table", action="store_true", help="print only the markdown table")
    p.add_argument("--extra", default="", help="extra real_hand.py arguments for --run (e.g. a tiny dry run)")
    p.add_argument("--collect", nargs="+", metavar=("ROW", "SUMMARY"),
                   help="merge the real_hand.py summary.json files of one row's seeds (run separately) into the row")
    args = p.parse_args(argv)
    if args.collect:
        row, files = args.collect[0], args.collect[1:]
        if row not in ROWS or not files:
            p.error(f"--collect takes a row ({', '.join(ROWS)}) and one or more summary.json files")
        print(f"wrote {collect(row, files, args)}")
        print(table(args))
        return
    if args.run:
        cmd = command(args.run, args) + (" " + args.extra if args.extra else "")
        print(cmd, flush=True)
        sys.exit(subprocess.call(cmd, shell=True, cwd=ROOT))
    if not args.table:
        print("# one command per row; run each alone on the machine\n")
        for row in ROWS:
            print(f"# {row}: {ROWS[row][0]}\n{command(row, args)}\n")
    print(table(args))


if __name__ == "__main__":
    main()
