"""The ablation rows and the method comparison build real_hand.py command lines that its parser accepts, each
ablation row differs from the baseline in exactly the settings its description names, and the seeds of a row run
one at a time are merged into the row only when they trained its recipe on one machine."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from benchmarks import ablation, machine, real_hand
from benchmarks.compare_methods import real_hand_command
from scripts.utils import bf16_is_fast

#: the recipe settings an ablation row may change, and the rows that change each
ROW_SETTINGS = ("learning_rate", "scn_variant", "lr_schedule", "keep_aspect", "learnable_sigma", "ema_decay",
                "grad_clip_norm", "decode_method")
_HAND = ("learning_rate", "lr_schedule", "scn_variant")
CHANGED = {
    "baseline": set(),
    "learning_rate": {"learning_rate"},
    "schedule": {"lr_schedule"},
    "fast_scn": {"scn_variant"},
    "letterbox": {"keep_aspect"},
    "learnable_sigma": {"learnable_sigma"},
    "ema": {"ema_decay"},
    "grad_clip": {"grad_clip_norm"},
    "schedule_fast": {*_HAND},
    "schedule_fast_gn": {*_HAND},
    "fast_gn_recipe": {*_HAND, "grad_clip_norm"},
    "schedule_fast_ema": {*_HAND, "ema_decay"},
    "schedule_fast_ema_clip": {*_HAND, "ema_decay", "grad_clip_norm"},
    "schedule_fast_ema_clip_gfit": {*_HAND, "ema_decay", "grad_clip_norm", "decode_method"},
    "combined": set(ROW_SETTINGS),
}


def _command_recipe(argv: list[str], tmp_path) -> dict:
    """The recipe real_hand.py trains with ``argv`` (its arguments after the script)."""
    args = real_hand.parse_args(argv)
    return real_hand.recipe(real_hand.config_files(args), real_hand.training_overrides(args, 0, tmp_path))


def test_every_ablation_row_is_listed():
    assert set(ablation.ROWS) == set(CHANGED)


@pytest.mark.parametrize("row", sorted(CHANGED))
def test_ablation_row_changes_only_what_it_names(row, tmp_path):
    args = _ablation_args(tmp_path)
    assert shlex.split(ablation.command(row, args))[:2] == ["python", "benchmarks/real_hand.py"]
    baseline, config = ablation.row_recipe("baseline", args), ablation.row_recipe(row, args)
    assert baseline["scn_variant"] == "paper" and baseline["lr_schedule"] == "none"
    assert baseline["ema_decay"] == 0.0 and not baseline["keep_aspect"] and not baseline["learnable_sigma"]
    assert baseline["grad_clip_norm"] == 0.0 and baseline["decode_method"] == "parabola"
    assert baseline["learning_rate"] == pytest.approx(1e-4)  # the paper's rate, the recipe before issue #9
    changed = {key for key in real_hand.RECIPE_KEYS if config[key] != baseline[key]}
    assert changed == CHANGED[row], f"{row}: changes {sorted(changed)}"
    # a row's rate is the baseline's, hand.json's or (fast_gn_recipe) fast_gn's; every row trains on hand.json's
    # grid, for the budget given
    rate = (ablation.FAST_GN_LR if row == "fast_gn_recipe" else 3e-4) if "learning_rate" in CHANGED[row] else 1e-4
    assert config["learning_rate"] == pytest.approx(rate)
    assert config["max_minutes"] == 60.0
    assert config["spatial_size"] == [256, 256] and config["sigma"] == 3.0


def test_the_row_named_the_hand_default_is_what_real_hand_trains_by_default(tmp_path):
    default_rows = [row for row, (change, _) in ablation.ROWS.items() if "hand.json default" in change]
    assert default_rows == ["schedule_fast_ema_clip_gfit"]
    settings = {**ablation.BASELINE, **ablation.ROWS["schedule_fast_ema_clip_gfit"][1]}
    recipe = _command_recipe([], tmp_path)
    assert {key: recipe[key] for key in ROW_SETTINGS} == settings


def test_real_hand_learning_rate_defaults_to_the_overlay(tmp_path):
    assert _command_recipe([], tmp_path)["learning_rate"] == pytest.approx(3e-4)
    assert _command_recipe(["--learning-rate", "0.0001"], tmp_path)["learning_rate"] == pytest.approx(1e-4)


def test_method_comparison_trains_every_method_at_one_rate(tmp_path):
    cmd = real_hand_command("scn", "../shared/data/hand-ipilab", 8.0, "configs/hand.json", tmp_path, 0, None, [])
    recipe = _command_recipe(cmd[2:], tmp_path)
    assert recipe["learning_rate"] == pytest.approx(1e-4) and recipe["ema_decay"] == 0.0
    assert recipe["grad_clip_norm"] == 0.0 and recipe["decode_method"] == "parabola"


def _seed_summary(row: str, seed: int, ipe: float, tmp_path) -> str:
    """A single-seed summary.json as real_hand.py writes it for ``row`` (its figures invented, its recipe the row's)."""
    args = real_hand.parse_args(shlex.split(ablation.command(row, _ablation_args(tmp_path)))[2:])
    overrides = real_hand.training_overrides(args, seed, tmp_path / f"{row}{seed}" / f"seed{seed}")
    run = {"seed": seed, "config": real_hand.config_files(args), "num_tune": 10, "overrides": overrides,
           "recipe": real_hand.recipe(real_hand.config_files(args), overrides),
           "splits": {"valid": {name: ipe for name in real_hand.FIGURES}}}
    path = tmp_path / f"{row}{seed}" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": run["config"], "budget_minutes": 60.0, "tune_fraction": 0.11,
                                "seeds": [seed], "runs": [run], "over_seeds": real_hand.aggregate([run])}))
    return str(path)


def _ablation_args(tmp_path, budget_epochs=None) -> argparse.Namespace:
    return argparse.Namespace(dataset_dir="../shared/data/hand-ipilab", budget_minutes=60.0, seeds="0,1",
                              out=str(tmp_path / "ablation"), budget_epochs=budget_epochs)


def test_an_ablation_in_epochs_trains_every_row_for_those_epochs_without_a_clock(tmp_path):
    args = _ablation_args(tmp_path, budget_epochs=30)
    for row in ("baseline", "schedule_fast"):
        words = shlex.split(ablation.command(row, args))
        assert "--budget-epochs" in words and "--budget-minutes" not in words
        config = ablation.row_recipe(row, args)
        assert config["max_epochs"] == 30 and config["max_minutes"] is None
    # seeds trained for 60 minutes are not that row
    first = _seed_summary("schedule_fast", 0, 1.0, tmp_path)
    with pytest.raises(SystemExit, match="max_epochs"):
        ablation.collect("schedule_fast", [first], args)
    with pytest.raises(SystemExit):
        real_hand.parse_args(["--budget-epochs", "0"])


def test_seeds_run_separately_are_collected_into_their_row(tmp_path):
    args = _ablation_args(tmp_path)
    first, second = _seed_summary("schedule_fast_ema", 0, 1.0, tmp_path), _seed_summary("schedule_fast_ema", 1, 1.2, tmp_path)
    target = ablation.collect("schedule_fast_ema", [first, second], args)
    merged = json.loads(target.read_text())
    assert merged["seeds"] == [0, 1] and merged["recipe"]["ema_decay"] == 0.999
    assert merged["over_seeds"]["valid"]["ipe_px256"]["mean"] == pytest.approx(1.1)
    assert "| schedule_fast_ema |" in ablation.table(args) and "1.100 ± 0.141" in ablation.table(args)
    assert "| not recorded |" in ablation.table(args)  # these invented runs name no machine
    # a seed of another row, or the same seed twice, is refused
    with pytest.raises(ValueError, match="another recipe"):
        real_hand.merge_summaries([json.loads(Path(first).read_text()),
                                   json.loads(Path(_seed_summary("schedule_fast", 1, 1.0, tmp_path)).read_text())])
    with pytest.raises(SystemExit, match="not row 'schedule_fast'"):
        ablation.collect("schedule_fast", [first, second], args)
    with pytest.raises(ValueError, match="repeat a seed"):
        real_hand.merge_summaries([json.loads(Path(first).read_text())] * 2)
    # a run without a recorded recipe is refused, not resolved against today's defaults
    unrecorded = json.loads(Path(second).read_text())
    del unrecorded["runs"][0]["recipe"]
    with pytest.raises(ValueError, match=r"seeds \[1\] have no recorded recipe"):
        real_hand.merge_summaries([json.loads(Path(first).read_text()), unrecorded])


def test_seeds_from_different_machines_are_not_merged(tmp_path):
    first = json.loads(Path(_seed_summary("schedule_fast_ema", 0, 1.0, tmp_path)).read_text())
    second = json.loads(Path(_seed_summary("schedule_fast_ema", 1, 1.2, tmp_path)).read_text())
    here, elsewhere = machine.describe(), {**machine.describe(), "cpu": "AMD EPYC (another CPU)"}
    first["runs"][0]["machine"], second["runs"][0]["machine"] = here, elsewhere
    with pytest.raises(ValueError, match="different machines"):
        real_hand.merge_summaries([first, second])
    second["runs"][0]["machine"] = {**here, "load_average": 5.0}  # same CPU, another moment: merged
    merged = real_hand.merge_summaries([first, second])
    assert merged["seeds"] == [0, 1] and ablation.machine_name(merged) == here["cpu"]


def test_machine_description_names_the_cpu_and_bf16():
    described = machine.describe("cpu")
    assert described["cpu"] and described["cpu_count"] >= 1 and described["threads"] >= 1
    assert described["bf16_is_fast"] == bf16_is_fast("cpu")


def test_real_hand_reports_the_configured_decoder_first_then_the_others_for_the_record():
    assert real_hand.evaluation_variants("valid", "gaussian_fit", True) == [
        ("valid", "gaussian_fit", True), ("valid_parabola", "parabola", True), ("valid_no_tta", "gaussian_fit", False)]
    assert real_hand.evaluation_variants("valid", "parabola", False) == [
        ("valid", "parabola", False), ("valid_gaussian_fit", "gaussian_fit", False)]


def test_runs_recorded_before_the_decoder_key_merge_as_the_parabola(tmp_path):
    first, second = (json.loads(Path(_seed_summary("schedule_fast_ema", seed, 1.0, tmp_path)).read_text())
                     for seed in (0, 1))
    for summary in (first, second):
        del summary["runs"][0]["recipe"]["decode_method"]
    assert real_hand.merge_summaries([first, second])["recipe"]["decode_method"] == "parabola"
    gfit = json.loads(Path(_seed_summary("schedule_fast_ema_clip_gfit", 2, 1.0, tmp_path)).read_text())
    clip = json.loads(Path(_seed_summary("schedule_fast_ema_clip", 3, 1.0, tmp_path)).read_text())
    with pytest.raises(ValueError, match="decode_method"):
        real_hand.merge_summaries([clip, gfit])


def test_real_hand_trains_selects_and_reports_with_the_configured_decoder_and_tta(tmp_path):
    """A real (tiny) real_hand.py run on demo hands: the report of ``valid`` is decoded as hand.json says, with
    test-time augmentation, and the other decoder and the run without TTA are evaluated beside it."""
    from scripts.data.synthetic import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "hand", kind="hand", num_train=24, num_valid=2, seed=3)
    summary = real_hand.main(["--dataset_dir", str(data), "--budget-minutes", "0.2", "--seeds", "0", "--tta",
                              "--num-filters", "8", "--report-minutes", "0.2", "--out", str(tmp_path / "out"),
                              "--override", "spatial_size=[64, 64]", "--override", "amp=false",
                              "--override", "reference_image_file=null"])
    run = summary["runs"][0]
    assert run["tta"] is True and run["recipe"]["decode_method"] == "gaussian_fit" and run["num_tune"] >= 1
    assert set(run["splits"]) == {"valid", "valid_parabola", "valid_no_tta"}
    reports = {name: json.loads((tmp_path / "out" / "seed0" / "eval" / name / "summary.json").read_text())
               for name in run["splits"]}
    assert {name: r["decode_method"] for name, r in reports.items()} == {
        "valid": "gaussian_fit", "valid_parabola": "parabola", "valid_no_tta": "gaussian_fit"}
    assert reports["valid"]["mean_px"] != reports["valid_no_tta"]["mean_px"]  # TTA changed the points
    assert summary["over_seeds"]["valid"]["ipe_px256"]["values"] == [reports["valid"]["ipe_px256"]]


def test_real_hand_in_epochs_trains_exactly_that_many_and_finishes_its_schedule(tmp_path):
    """A real (tiny) run with ``--budget-epochs``: the trainer stops after those epochs, not on a clock, and the
    cosine schedule, driven by the iterations, has decayed to ~0 by the last one."""
    from scripts.data.synthetic import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "hand", kind="hand", num_train=12, num_valid=1, seed=4)
    summary = real_hand.main(["--dataset_dir", str(data), "--budget-epochs", "3", "--seeds", "0",
                              "--num-filters", "8", "--out", str(tmp_path / "out"),
                              "--override", "spatial_size=[64, 64]", "--override", "amp=false",
                              "--override", "reference_image_file=null"])
    run = summary["runs"][0]
    assert summary["budget_epochs"] == 3 and summary["budget_minutes"] is None
    assert run["epochs"] == 3 and not run["ended_by_budget_schedule"]
    assert run["recipe"]["max_epochs"] == 3 and run["recipe"]["max_minutes"] is None
    curve = (tmp_path / "out" / "seed0" / "learning_curve.csv").read_text().splitlines()
    rows = [dict(zip(curve[0].split(","), line.split(","))) for line in curve[1:]]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert int(rows[-1]["iteration"]) == run["iterations"] and run["iterations"] % 3 == 0
    assert float(rows[-1]["lr"]) < 0.1 * float(rows[0]["lr"])
