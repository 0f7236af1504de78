"""Ablation of the issue #9 recipe on the hand radiographs: each change alone and all combined.

Every row is one ``benchmarks/real_hand.py`` run (honest protocol: selection on 10 tuning images
carved from ``train``, report on ``valid``; ``--seeds`` seeds; ``--budget-minutes`` per seed). The
decoding change needs no run of its own: every run evaluates its checkpoint with both decoders
(``eval/valid`` parabola, ``eval/valid_gaussian_fit`` window Gaussian fit), so the table has both; nor does
test-time augmentation: ``benchmarks/eval_variants.py`` evaluates a finished row's checkpoints with and without it.

Run each row alone on the machine (a run beside another job gets about half the iterations)::

    python benchmarks/ablation.py                       # prints the commands (and the table of finished rows)
    python benchmarks/ablation.py --run baseline        # runs one row (then the next, in any order or session)
    python benchmarks/ablation.py --table               # markdown table of the rows found under --out

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

FAST = "--override 'scn_variant=\"fast\"'"
#: row name -> (what changes, real_hand.py arguments besides the shared ones)
ROWS = {
    "baseline": ("previous recipe: paper SCN, stretched 256x256, constant lr, fixed sigma", "--lr-schedule none"),
    "schedule": ("+ warm-up + cosine lr over the time budget", "--lr-schedule cosine"),
    "fast_scn": ("+ fast SCN (stride-2 stem, 3x3, SC at 1/8)", f"--lr-schedule none {FAST}"),
    "letterbox": ("+ aspect-preserving letterbox", "--lr-schedule none --override keep_aspect=true"),
    "learnable_sigma": ("+ learnable sigma (normalised targets + penalty)",
                        "--lr-schedule none --override learnable_sigma=true"),
    "ema": ("+ EMA of the weights (decay 0.999) for selection and model.pt", "--lr-schedule none --override ema_decay=0.999"),
    "combined": ("all of the above", f"--lr-schedule cosine {FAST} --override keep_aspect=true "
                 "--override learnable_sigma=true --override ema_decay=0.999"),
    "schedule_fast": ("cosine schedule + fast SCN (candidate default)", f"--lr-schedule cosine {FAST}"),
}


def command(row: str, args) -> str:
    extra = ROWS[row][1]
    return (f"python benchmarks/real_hand.py --dataset_dir {shlex.quote(args.dataset_dir)} "
            f"--budget-minutes {args.budget_minutes:g} --seeds {args.seeds} {extra} "
            f"--out {shlex.quote(str(Path(args.out) / row))}")


def table(args) -> str:
    header = ("| row | change | valid IPE px@256 (mean ± SD over seeds) | outliers >10 px@256 / image | "
              "IPE with Gaussian-fit decoding | command |")
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    for row, (what, _) in ROWS.items():
        path = Path(args.out) / row / "summary.json"
        cells = ["not run"] * 3
        if path.is_file():
            over = json.loads(path.read_text())["over_seeds"]

            def cell(split, name):
                s = over.get(split, {}).get(name)
                return "n/a" if s is None else f"{s['mean']:.3f} ± {s['sd']:.3f}"

            cells = [cell("valid", "ipe_px256"), cell("valid", "outliers_px256_10"),
                     cell("valid_gaussian_fit", "ipe_px256")]
        lines.append(f"| {row} | {what} | " + " | ".join(cells) + f" | `{command(row, args)}` |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", default="../shared/data/hand-ipilab")
    p.add_argument("--budget-minutes", type=float, default=60.0)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--out", default="bench_out/ablation")
    p.add_argument("--run", choices=sorted(ROWS), help="run this row now (alone on the machine)")
    p.add_argument("--table", action="store_true", help="print only the markdown table")
    p.add_argument("--extra", default="", help="extra real_hand.py arguments for --run (e.g. a tiny dry run)")
    args = p.parse_args(argv)
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
