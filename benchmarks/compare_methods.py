"""Equal wall-clock comparison of the bundle's methods on the hand radiographs (hand-ipilab format).

Runs :mod:`benchmarks.real_hand` once per method, one after the other in fresh processes, with the
same budget, data overlay, data, threads and seed, and writes a Markdown table of the results:

* ``scn``: SpatialConfiguration-Net, ``configs/train.json`` (+ the data overlay);
* ``scn_fast``: the same with ``scn_variant = "fast"`` (stride-2 stem, 3 x 3 kernels; ``scripts.networks.scn``);
* ``hourglass``: the stacked hourglass alone (intermediate supervision, MSE only): the overlay
  ``configs/adversarial.json`` with ``adversarial_alpha = adversarial_beta = 0`` (the
  discriminators are then neither run nor trained);
* ``hourglass_adv``: the hourglass with the pose and confidence discriminators (Adversarial PoseNet), at
  the config's balanced weights (``adversarial_alpha`` 1e-4, ``adversarial_beta`` 1.25e-4, times gamma**2;
  the run's TensorBoard log under ``<out>/hourglass_adv/runs`` has the ``adversarial/grad_ratio`` it reached);
* ``scn_adv``: the SCN (train.json's ``network_def``) as the generator of the adversarial engine
  (``--methods`` to include it).

Every method follows ``real_hand.py``'s protocol: the checkpoint is selected on a tuning subset carved
from ``train`` and evaluated on every split of ``splits.csv`` other than ``train``, never selected on them. Outputs under ``--out``: one ``real_hand.py`` folder per method,
``comparison.json`` and ``comparison.md``.

Example (20 minutes per method on one core, the other core free for other work)::

    taskset -c 0 python benchmarks/compare_methods.py --budget-minutes 20 --threads 1 --out bench_out/compare
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ADVERSARIAL = "configs/adversarial.json"
#: train.json's network (the SCN), as an override of the adversarial overlay's generator
SCN_NETWORK_DEF = json.dumps(json.loads((ROOT / "configs" / "train.json").read_text())["network_def"])
#: name -> (label, method overlays merged after train.json and the data overlay, overrides KEY=JSON)
METHODS = {
    "scn": ("SCN", [], []),
    "scn_fast": ("SCN, fast variant", [], ['scn_variant="fast"']),
    "hourglass": ("Hourglass alone", [ADVERSARIAL], ["adversarial_alpha=0.0", "adversarial_beta=0.0"]),
    "hourglass_adv": ("Hourglass + pose & confidence discriminators", [ADVERSARIAL], []),
    "scn_adv": ("SCN + pose & confidence discriminators", [ADVERSARIAL], [f"network_def={SCN_NETWORK_DEF}"]),
}


#: Adam rate of every method in the model card's comparison and occlusion tables
COMPARISON_LEARNING_RATE = 1e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "hand-ipilab"))
    p.add_argument("--budget-minutes", type=float, default=20.0, help="wall-clock training budget per method")
    p.add_argument("--methods", default="scn,hourglass,hourglass_adv", help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--seed", type=int, default=0, help="the seed of every method's run")
    p.add_argument("--data-overlay", default="configs/hand.json", help="data overlay ('none': the demo contract)")
    p.add_argument("--out", default=str(ROOT / "bench_out" / "compare"))
    p.add_argument("--learning-rate", type=float, default=COMPARISON_LEARNING_RATE,
                   help="Adam rate of every method (default: the rate of the model card's comparison)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=JSON", help="passed to every method")
    return p.parse_args(argv)


def real_hand_command(method: str, dataset_dir, budget: float, data_overlay: str, out: Path, seed: int,
                      threads: int | None, overrides: list[str],
                      learning_rate: float = COMPARISON_LEARNING_RATE) -> list[str]:
    """The ``real_hand.py`` command that trains ``method`` (one seed) at a wall-clock budget into ``out``,
    at one Adam rate for every method, without a weight average, without gradient clipping and with the parabola
    decoder (the data overlay's rate, average, clipping threshold and decoder were chosen for the fast SCN; the model
    card's comparison was measured this way)."""
    _, overlays, method_overrides = METHODS[method]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "real_hand.py"), "--dataset_dir", str(dataset_dir),
           "--budget-minutes", str(budget), "--data-overlay", data_overlay, "--out", str(out),
           "--report-minutes", str(budget), "--seeds", str(seed), "--learning-rate", str(learning_rate),
           "--override", "ema_decay=0.0", "--override", "grad_clip_norm=0.0", "--override", "decode_method=\"parabola\""]
    for overlay in overlays:
        cmd += ["--overlay", overlay]
    if threads:
        cmd += ["--threads", str(threads)]
    for item in method_overrides + overrides:
        cmd += ["--override", item]
    return cmd


def run_method(name: str, args, out: Path) -> dict:
    cmd = real_hand_command(name, args.dataset_dir, args.budget_minutes, args.data_overlay, out / name, args.seed,
                            args.threads, args.override, args.learning_rate)
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    result = json.loads((out / name / f"seed{args.seed}" / "result.json").read_text())
    result["process_minutes"] = (time.perf_counter() - start) / 60.0
    return result


def table(results: dict[str, dict], split: str) -> str:
    rows = [
        "| method | minutes trained | iterations (epochs) | IPE px@256 | median px@256 | outliers >10 px@256 per image | "
        "PE mean ± sd (orig px) | mean ± sd (norm. mm) | SDR 2 / 4 / 10 nmm (%) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        s = r["splits"][split]
        nmm = "n/a"
        sdr = "n/a"
        if s.get("mean_nmm") is not None:
            nmm = f"{s['mean_nmm']:.2f} ± {s['std_nmm']:.2f}"
            sdr = f"{100 * s['sdr_nmm_2']:.1f} / {100 * s['sdr_nmm_4']:.1f} / {100 * s['sdr_nmm_10']:.1f}"
        rows.append(
            f"| {METHODS[name][0]} | {r['train_minutes']:.1f} | {r['iterations']} ({r['epochs']}) | {s['ipe_px256']:.2f} | {s['median_px256']:.2f} | "
            f"{s['outliers_px256_10']:.2f} | {s['mean_px']:.1f} ± {s['std_px']:.1f} | {nmm} | {sdr} |"
        )
    return "\n".join(rows)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.dataset_dir = str(Path(args.dataset_dir).resolve())
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SystemExit(f"compare_methods: unknown method(s) {unknown}; choose from {list(METHODS)}")
    results = {}
    for name in names:
        results[name] = run_method(name, args, out)
        (out / "comparison.json").write_text(json.dumps(results, indent=2))
    splits = sorted(set.intersection(*(set(r["splits"]) for r in results.values())))
    text = [f"Budget {args.budget_minutes:g} min of training per method (wall clock), data overlay {args.data_overlay}, "
            f"threads {args.threads or 'default'}; checkpoint selected on valid."]
    for split in splits:
        text += ["", f"Split `{split}`:", "", table(results, split)]
    (out / "comparison.md").write_text("\n".join(text) + "\n")
    print("\n" + "\n".join(text))
    return results


if __name__ == "__main__":
    main()
