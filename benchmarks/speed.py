"""Speed benchmark: training steps/s, inference ms/image, data loading and peak memory.

Compares, side by side in one process on the same machine:

* ``baseline``: a plain fp32 eager SpatialConfigurationNet + HeatmapLoss + Adam (batch 1,
  contiguous memory format, default torch settings), stepped in a bare Python loop; the
  paper-faithful SCN (``SCN_VARIANTS["paper"]``);
* ``fast_scn``: the same loop with the fast SCN (``SCN_VARIANTS["fast"]``: local appearance at 1/2
  resolution, 3x3 convolutions, lighter SC), ``fast_gn``: the same with GroupNorm in the local appearance
  (``SCN_VARIANTS["fast_gn"]``), and ``hourglass``: the same loop with the stacked
  hourglass of ``configs/adversarial.json`` (its ``network_def``, heatmaps up-sampled to the
  input, no discriminators); leave all three out with ``--skip-networks``;
* ``project``: what ``configs/train.json`` resolves to on this machine (network, loss, optimizer,
  inferer and the MONAI ``SupervisedTrainer`` built through ``monai.bundle.ConfigParser``, with
  ``amp``/``channels_last`` left on ``"auto"``);
* ``cfg_paper``: the same config with the paper-faithful SCN, when the config's ``scn_variant`` is another one
  (``project`` / ``cfg_paper`` is the speed-up as the bundle trains on this machine, with bf16 autocast where
  it is fast; ``fast_scn`` / ``baseline`` is the same in plain fp32 loops);
* ``bf16+cl``: the same config with ``amp`` and ``channels_last`` forced on (skip with ``--skip-bf16``);
* ``compiled``: ``torch.compile`` of the baseline network (only with ``--compile``).

Timings are interleaved: every round runs each variant once, in alternating order, and the median
over rounds is reported. Step timing uses one random batch of the right shapes; the data-loading
timing runs the configured train transforms on real demo files. Peak memory is the resident set
size (RSS) high-water mark above the RSS at the start of the measured phase (Linux:
``/proc/self/clear_refs`` resets the mark; elsewhere it is reported as unavailable).

Usage::

    python benchmarks/speed.py                      # configs/train.json: the demo hand, 128 x 128
    python benchmarks/speed.py --overlay configs/hand.json --json bench_out/hand.json   # 256 x 256
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

from benchmarks.machine import describe, load_average  # noqa: E402
from scripts.bundle_configs import prepare_demo_dataset  # noqa: E402
from scripts.engines import decode_batch_points  # noqa: E402
from scripts.utils import resolve_flag  # noqa: E402
from scripts.heatmap import decode_heatmaps  # noqa: E402
from scripts.losses import HeatmapLoss  # noqa: E402
from scripts.networks.scn import SCN_VARIANTS, SpatialConfigurationNet  # noqa: E402

__all__ = ["PeakRss", "TrainVariant", "main"]

DEFAULT_CONFIG = REPO_ROOT / "configs" / "train.json"
MIB = 1024.0 * 1024.0


# ---------------------------------------------------------------- environment and memory


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``), or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def _release_freed_memory() -> None:
    gc.collect()
    try:  # return freed heap pages to the OS so that the next phase starts from a clean RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRss:
    """Context manager measuring the RSS high-water mark of the process while it is open.

    Attributes (bytes, after exit): ``start`` RSS on entry, ``peak`` high-water mark while open,
    ``delta`` = ``peak - start`` (None where the mark cannot be reset, i.e. outside Linux), and
    ``cuda_peak`` the peak CUDA memory allocated by torch while open (None on CPU).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self.peak = self.delta = self.cuda_peak = None

    def __enter__(self) -> "PeakRss":
        _release_freed_memory()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (and ru_maxrss) to the current RSS
            self._reset = True
        except OSError:
            self._reset = False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = current_rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kib("VmHWM")
        self.peak = hwm * 1024 if hwm is not None else _maxrss_bytes()
        if self._reset and self.start is not None:
            self.delta = self.peak - self.start
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- config


def load_config(config_file: Path, overlays: list[Path], num_filters: int, **overrides) -> ConfigParser:
    """The bundle config merged with ``overlays``, the filter count and ``overrides`` (``id -> value``) applied."""
    parser = ConfigParser()
    parser.read_config([str(config_file)] + [str(o) for o in overlays])
    parser["bundle_root"] = str(REPO_ROOT)
    parser["num_filters"] = num_filters
    for key, value in overrides.items():
        parser[key] = value
    return parser


def random_batch(spatial_size, num_landmarks: int, device: torch.device, seed: int = 0) -> dict:
    """A collated batch of one random image (1, 1, H, W) with random landmarks (1, N, 2) inside the grid."""
    gen = torch.Generator().manual_seed(seed)
    height, width = spatial_size
    points = torch.rand(1, num_landmarks, 2, generator=gen) * torch.tensor([width - 1.0, height - 1.0])
    return {
        "image": torch.randn(1, 1, height, width, generator=gen).to(device),
        "landmarks": points.to(device),
        "landmarks_mask": torch.ones(1, num_landmarks, device=device),
    }


# ---------------------------------------------------------------- variants


class TrainVariant:
    """One way of training and running the network, timed by ``train(n)`` and ``infer(n)``.

    Args:
        name: label in the report.
        description: what it is, one line.
        train_fn: ``train_fn(n)`` runs ``n`` training steps.
        infer_fn: ``infer_fn(n)`` runs ``n`` single-image inferences (eval forward + decode).
        steps, rounds: training steps per round and timed rounds (slow variants use fewer).
        warmup: untimed training steps before the timed rounds (one inference is always untimed).
        infer_reps: inferences per round.
        device: where the tensors live (synchronised around each timing on CUDA).
    """

    def __init__(self, name, description, train_fn, infer_fn, steps, rounds, warmup, infer_reps, device) -> None:
        self.name, self.description = name, description
        self.train_fn, self.infer_fn = train_fn, infer_fn
        self.steps, self.rounds, self.warmup, self.infer_reps = steps, rounds, warmup, infer_reps
        self.device = device
        self.results: dict = {"description": description}

    def _timed(self, fn, n: int) -> float:
        _sync(self.device)
        start = time.perf_counter()
        fn(n)
        _sync(self.device)
        return time.perf_counter() - start

    def warm_up(self, phase: str) -> None:
        """Runs the untimed steps of ``phase`` (``"train"`` or ``"infer"``), measuring peak memory."""
        fn, n = (self.train_fn, self.warmup) if phase == "train" else (self.infer_fn, 1)
        with PeakRss(self.device) as mem:
            seconds = self._timed(fn, n)
        self.results[f"{phase}_warmup_s"] = seconds
        self.results[f"{phase}_rss_start_mib"] = None if mem.start is None else mem.start / MIB
        self.results[f"{phase}_rss_peak_mib"] = mem.peak / MIB
        self.results[f"{phase}_rss_delta_mib"] = None if mem.delta is None else mem.delta / MIB
        if mem.cuda_peak is not None:
            self.results[f"{phase}_cuda_peak_mib"] = mem.cuda_peak / MIB

    def time_round(self, phase: str) -> None:
        if phase == "train":
            seconds = self._timed(self.train_fn, self.steps)
            self.results.setdefault("train_steps_per_s", []).append(self.steps / seconds)
        else:
            seconds = self._timed(self.infer_fn, self.infer_reps)
            self.results.setdefault("infer_ms", []).append(1000.0 * seconds / self.infer_reps)


def baseline_variant(name, description, net, loss, batch, compile_net: bool = False, **kwargs) -> TrainVariant:
    """Plain fp32 eager loop (or ``torch.compile`` of the same network) with Adam at default settings."""
    optimizer = torch.optim.Adam(list(net.parameters()) + list(loss.parameters()), lr=1e-4)
    model = torch.compile(net) if compile_net else net
    image, targets = batch["image"], {k: batch[k] for k in ("landmarks", "landmarks_mask")}

    def train(n):
        model.train()
        for _ in range(n):
            optimizer.zero_grad()
            value = loss(model(image), targets)
            value.backward()
            optimizer.step()

    def infer(n):
        model.eval()
        with torch.no_grad():
            for _ in range(n):
                decode_heatmaps(model(image))

    return TrainVariant(name, description, train, infer, **kwargs)


def config_variant(name, description, parser: ConfigParser, batch, **kwargs) -> TrainVariant:
    """The config's ``SupervisedTrainer`` (handlers removed) and its network + inferer for inference."""
    trainer = parser.get_parsed_content("train#trainer")
    network = parser.get_parsed_content("network")
    inferer = parser.get_parsed_content("inferer")
    memory_format = parser.get_parsed_content("memory_format")
    image = batch["image"].to(memory_format=memory_format)

    def train(n):
        trainer.data_loader = [batch] * n
        trainer.state.max_epochs = None  # start a fresh one-epoch run of len(data_loader) iterations
        trainer.run()

    def infer(n):
        network.eval()
        with torch.no_grad():
            for _ in range(n):
                decode_batch_points(inferer(image, network))

    return TrainVariant(name, description, train, infer, **kwargs)


def _disable_compile_caches() -> None:
    """Turns off torch.compile's FX-graph and AOT-autograd caches in this process (near-cold compile time)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = False
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = False


def _spread(count: int, total: int) -> set[int]:
    """``count`` round indices spread evenly over ``range(total)`` (a variant with fewer rounds
    then samples the machine's load over the whole phase, not only at its start)."""
    if count >= total:
        return set(range(total))
    if count == 1:
        return {total // 2}
    return {round(i * (total - 1) / (count - 1)) for i in range(count)}


def run_phase(variants: list[TrainVariant], phase: str, rounds: int) -> None:
    """Warms every variant up, then times ``rounds`` rounds, alternating the order of the variants.

    A variant that fails to warm up is dropped if it is the optional ``compiled`` one (torch.compile
    needs a working C++ toolchain on CPU); any other failure is raised.
    """
    print(f"{phase}: warm-up ...", flush=True)
    for v in list(variants):
        try:
            v.warm_up(phase)
        except Exception as err:  # noqa: BLE001
            if v.name != "compiled":
                raise
            print(f"torch.compile failed, skipped: {type(err).__name__}: {str(err).splitlines()[0]}")
            variants.remove(v)
    key, unit = ("train_steps_per_s", "steps/s") if phase == "train" else ("infer_ms", "ms")
    timed_rounds = {v.name: _spread(min(v.rounds, rounds), rounds) for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            if r in timed_rounds[v.name]:
                v.time_round(phase)
        so_far = ", ".join(f"{v.name} {_median(v.results.get(key, [])):.3g}" for v in variants)
        print(f"{phase}: round {r + 1}/{rounds} ({unit}, median so far: {so_far})", flush=True)


# ---------------------------------------------------------------- data loading


def time_data_loading(args, device: torch.device) -> dict:
    """Per-sample time of the configured train transforms on real (demo) files.

    The deterministic part runs once when the ``CacheDataset`` is built (timed as a whole, wall
    clock with the config's thread pool); the random augmentation runs every time a sample is
    drawn through the config's ``DataLoader`` (timed over ``2 * data_samples`` draws).
    """
    overrides = {"train#dataset#data": f"$@datasource.datalist(@train_split)[:{args.data_samples}]"}
    if args.data_dir:
        overrides["dataset_dir"] = str(Path(args.data_dir).expanduser().absolute())
    parser = load_config(args.config, args.overlay, args.num_filters, **overrides)
    result: dict = {}
    start = time.perf_counter()
    dataset_dir = parser.get_parsed_content("dataset_dir")
    # the configs' initialize step: writes the demo data on first use when dataset_dir is the demo folder
    prepare_demo_dataset(dataset_dir, parser.get_parsed_content("demo_dir"), parser.get_parsed_content("demo_kind"))
    result["dataset_dir"] = dataset_dir
    result["dataset_prepare_s"] = time.perf_counter() - start
    reference = parser.get_parsed_content("reference_image")
    if reference and not os.path.isfile(reference):
        # e.g. configs/hand.json names a file of the real hand dataset; the demo data has none
        substitute = parser.get_parsed_content("datasource").datalist(parser["train_split"])[0]["image"]
        result["note"] = f"reference image {reference} not found; histogram matching to {substitute} instead"
        parser["reference_image"] = substitute
    with PeakRss(device) as mem:
        start = time.perf_counter()
        dataset = parser.get_parsed_content("train#dataset")
        cache_s = time.perf_counter() - start
    result["num_images"] = len(dataset)
    result["cache_ms_per_image"] = 1000.0 * cache_s / max(1, len(dataset))
    result["cache_rss_delta_mib"] = None if mem.delta is None else mem.delta / MIB
    loader = parser.get_parsed_content("train#dataloader")
    next(iter(loader))  # warm-up draw
    draws, start = 0, time.perf_counter()
    for _ in range(2):
        for _batch in loader:
            draws += 1
    result["random_ms_per_sample"] = 1000.0 * (time.perf_counter() - start) / max(1, draws)
    result["random_draws"] = draws
    return result


# ---------------------------------------------------------------- report


def _median(values):
    return statistics.median(values) if values else float("nan")


def _fmt(value, spec=".1f", missing="n/a"):
    return missing if value is None else format(value, spec)


def print_report(data: dict | None, variants: list[TrainVariant], shape: str) -> dict:
    """Prints the tables and returns the summary figures (also saved with ``--json``)."""
    base = variants[0].results
    base_sps = _median(base.get("train_steps_per_s", []))
    base_ms = _median(base.get("infer_ms", []))
    summary = {}
    print(f"\nTraining, {shape}: median steps/s over rounds (rounds x steps per round), order alternated")
    print(f"{'variant':<10} {'steps/s':>8} {'ms/step':>9} {'vs base':>8} {'rounds':>7} {'warm-up s':>10} "
          f"{'peak RSS':>9} {'+RSS':>7}  (MiB)")
    for v in variants:
        r = v.results
        sps = _median(r.get("train_steps_per_s", []))
        r["train_steps_per_s_median"] = sps
        r["train_speedup_vs_baseline"] = sps / base_sps
        print(
            f"{v.name:<10} {sps:>8.3f} {1000.0 / sps:>9.1f} {sps / base_sps:>7.2f}x "
            f"{len(r.get('train_steps_per_s', [])):>3}x{v.steps:<3} {r['train_warmup_s']:>10.1f} "
            f"{_fmt(r.get('train_rss_peak_mib'), '.0f'):>9} {_fmt(r.get('train_rss_delta_mib'), '.0f'):>7}"
        )
    print(f"\nInference, {shape}, eval mode, forward + decode: median ms/image")
    print(f"{'variant':<10} {'ms/image':>9} {'vs base':>8} {'rounds':>7} {'first s':>8} "
          f"{'peak RSS':>9} {'+RSS':>7}  (MiB)")
    for v in variants:
        r = v.results
        ms = _median(r.get("infer_ms", []))
        r["infer_ms_median"] = ms
        r["infer_speedup_vs_baseline"] = base_ms / ms
        print(
            f"{v.name:<10} {ms:>9.1f} {base_ms / ms:>7.2f}x {len(r.get('infer_ms', [])):>3}x{v.infer_reps:<3} "
            f"{r['infer_warmup_s']:>8.2f} {_fmt(r.get('infer_rss_peak_mib'), '.0f'):>9} "
            f"{_fmt(r.get('infer_rss_delta_mib'), '.0f'):>7}"
        )
    print("\nvariants:")
    for v in variants:
        print(f"  {v.name:<10} {v.description}")
        summary[v.name] = v.results
    if "fast_scn" in summary:
        ratio = summary["fast_scn"]["train_speedup_vs_baseline"]
        print(f"fast SCN / paper-faithful SCN, training steps/s, side by side: {ratio:.2f}x "
              f"(issue #9 asks >= 3x); fast_gn / paper SCN: {summary['fast_gn']['train_speedup_vs_baseline']:.2f}x; "
              f"hourglass / paper SCN: {summary['hourglass']['train_speedup_vs_baseline']:.2f}x")
    if "cfg_paper" in summary:  # as the bundle trains on this machine: bf16 autocast where it is fast
        ratio = summary["project"]["train_steps_per_s_median"] / summary["cfg_paper"]["train_steps_per_s_median"]
        summary["project"]["train_speedup_vs_cfg_paper"] = ratio
        print(f"as the bundle trains here (amp, channels_last as resolved): project / cfg_paper (paper SCN), "
              f"training steps/s: {ratio:.2f}x")
    print("'+RSS': peak RSS above the RSS at the start of the warm-up steps (model and optimizer already built).")
    if "compiled" in summary and "compile_s" in summary["compiled"]:
        compiled = summary["compiled"]
        print(f"torch.compile (graph caches off; compiled kernels on disk may be reused): the warm-up steps took "
              f"{compiled['compile_s']:.1f} s more than at steady state; first eval forward "
              f"{compiled['infer_warmup_s']:.1f} s (recompiles for eval mode).")
    if data:
        project_ms = 1000.0 / summary["project"]["train_steps_per_s_median"]
        share = data["random_ms_per_sample"] / project_ms
        print(f"\nData loading (configured train transforms, real files in {data['dataset_dir']}):")
        if "note" in data:
            print(f"  note: {data['note']}")
        print(f"  deterministic part, cached once per image ({data['num_images']} images, config thread pool): "
              f"{data['cache_ms_per_image']:.1f} ms/image, +RSS {_fmt(data['cache_rss_delta_mib'], '.0f')} MiB")
        print(f"  random augmentation + collate, every step ({data['random_draws']} draws): "
              f"{data['random_ms_per_sample']:.1f} ms/sample = {100.0 * share:.1f} % of a project training step "
              f"({project_ms:.0f} ms)")
        data["share_of_project_step"] = share
    return summary


# ---------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlay", type=Path, action="append", default=[],
                        help="overlay merged after --config, e.g. configs/hand.json (256x256); repeatable")
    parser.add_argument("--preset", help=argparse.SUPPRESS)  # removed: gives the new form
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="bundle training config")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per timed round of the fp32 variants (default: 10 at 128x128, "
                             "fewer for larger images, in proportion to the pixel count)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, each running every variant once")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps per variant before timing")
    parser.add_argument("--infer-reps", type=int, default=5, help="inferences per timed round (fp32 variants)")
    parser.add_argument("--num-filters", type=int, default=64, help="num_filters of the network")
    parser.add_argument("--scn-variant", choices=sorted(SCN_VARIANTS), default=None,
                        help="scn_variant of the project config (default: the config's own)")
    parser.add_argument("--skip-bf16", action="store_true", help="leave out the forced bf16 + channels_last variant")
    parser.add_argument("--skip-networks", action="store_true",
                        help="leave out the fast SCN, fast_gn and the hourglass (plain loops beside the paper SCN baseline)")
    parser.add_argument("--bf16-rounds", type=int, default=2,
                        help="rounds (one step / one inference each) of the forced bf16 variant")
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile of the baseline network (graph caches off: near-cold compile time)")
    parser.add_argument("--data-dir", default=None,
                        help="dataset folder for the data-loading timing (default: the config's demo data)")
    parser.add_argument("--data-samples", type=int, default=16, help="train images cached for the data-loading timing")
    parser.add_argument("--skip-data", action="store_true", help="leave out the data-loading timing")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for this process (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = parser.parse_args(argv)
    if args.preset is not None:
        overlay = "" if args.preset == "demo_hand" else f" use --overlay configs/{args.preset}.json"
        parser.error(f"--preset was removed:{overlay or ' configs/train.json alone is the demo hand'}")
    for name in ("steps", "rounds", "warmup", "infer_reps", "num_filters", "bf16_rounds", "data_samples", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    trainer_overrides = {
        "train#trainer#train_data_loader": "$[None]",  # replaced by the random batch before each run
        "train#trainer#epoch_length": 1,
        "train#trainer#max_epochs": 1,
        "train#trainer#train_handlers": [],
    }
    if args.scn_variant is not None:
        trainer_overrides["scn_variant"] = args.scn_variant
    project_cfg = load_config(args.config, args.overlay, args.num_filters, **trainer_overrides)
    device = project_cfg.get_parsed_content("device")
    spatial_size = list(project_cfg.get_parsed_content("spatial_size"))
    num_landmarks = project_cfg.get_parsed_content("num_landmarks")
    sigma = project_cfg.get_parsed_content("sigma")
    if args.steps is None:
        args.steps = max(2, math.ceil(10 * 128 * 128 / (spatial_size[0] * spatial_size[1])))
    use_amp = resolve_flag(project_cfg["amp"], device)
    use_cl = resolve_flag(project_cfg["channels_last"], device)
    env = {
        **describe(device),  # cpu, cpu_count, torch, threads, bf16_is_fast, load_average (at the start), gpu on CUDA
        "device": str(device),
        "python": platform.python_version(),
        "overlays": [str(o) for o in args.overlay],
        "spatial_size": spatial_size,
        "num_landmarks": num_landmarks,
        "num_filters": args.num_filters,
        "project_amp": use_amp,
        "project_channels_last": use_cl,
    }
    print(f"CPU: {env['cpu']} | device: {device}{' (' + env['gpu'] + ')' if 'gpu' in env else ''}")
    print(f"torch {env['torch']}, threads {env['threads']}, bf16 native (scripts.utils.bf16_is_fast): "
          f"{env['bf16_is_fast']}, load average {_fmt(env['load_average'], '.2f')} on {os.cpu_count()} CPUs")
    print(f"{' + '.join(map(str, [args.config, *args.overlay]))}: {spatial_size[0]}x{spatial_size[1]}, {num_landmarks} landmarks, "
          f"num_filters {args.num_filters}; config resolves amp={project_cfg['amp']!r} -> {use_amp}, "
          f"channels_last={project_cfg['channels_last']!r} -> {use_cl}", flush=True)

    data = None
    if not args.skip_data:
        print("timing data loading ...", flush=True)
        data = time_data_loading(args, device)

    shape = f"{spatial_size[0]}x{spatial_size[1]}, {num_landmarks} landmarks, {args.num_filters} filters, batch 1"
    batch = random_batch(spatial_size, num_landmarks, device)
    fast = {"steps": args.steps, "rounds": args.rounds, "warmup": args.warmup, "infer_reps": args.infer_reps,
            "device": device}
    slow = {"steps": 1, "rounds": min(args.rounds, args.bf16_rounds), "warmup": 1, "infer_reps": 1, "device": device}

    def plain_parts(variant="paper"):
        net = SpatialConfigurationNet(in_channels=1, num_landmarks=num_landmarks, num_filters=args.num_filters,
                                      **SCN_VARIANTS[variant])
        return net.to(device), HeatmapLoss(num_landmarks, sigma=sigma).to(device)

    variants = [
        baseline_variant("baseline", "plain fp32 eager loop: paper-faithful SpatialConfigurationNet + HeatmapLoss + Adam, "
                         "contiguous", *plain_parts(), batch, compile_net=False, **fast),
        config_variant("project", "configs/train.json through ConfigParser + SupervisedTrainer "
                       f"(scn_variant {project_cfg['scn_variant']!r}, amp -> {use_amp}, channels_last -> {use_cl})",
                       project_cfg, batch, **fast),
    ]
    if project_cfg["scn_variant"] != "paper":  # the paper SCN as trained here (amp and channels_last as resolved)
        paper_cfg = load_config(args.config, args.overlay, args.num_filters,
                                **{**trainer_overrides, "scn_variant": "paper"})
        variants.append(config_variant("cfg_paper", "the project config with scn_variant 'paper' "
                                       f"(amp -> {use_amp}, channels_last -> {use_cl})", paper_cfg, batch, **fast))
    if not args.skip_networks:
        variants.append(baseline_variant("fast_scn", f"plain fp32 eager loop, fast SCN {SCN_VARIANTS['fast']}",
                                         *plain_parts("fast"), batch, **fast))
        variants.append(baseline_variant("fast_gn", f"plain fp32 eager loop, fast SCN with GroupNorm "
                                         f"{SCN_VARIANTS['fast_gn']}", *plain_parts("fast_gn"), batch, **fast))
        hourglass_def = json.loads((REPO_ROOT / "configs" / "adversarial.json").read_text())["network_def"]
        hourglass_def.update(num_landmarks=num_landmarks, upsample_output=True)
        hourglass = ConfigParser({"net": hourglass_def}).get_parsed_content("net")
        variants.append(baseline_variant("hourglass", "plain fp32 eager loop, stacked hourglass of "
                                         "configs/adversarial.json (up-sampled output, no discriminators)",
                                         hourglass.to(device), HeatmapLoss(num_landmarks, sigma=sigma).to(device),
                                         batch, **fast))
    if not args.skip_bf16:
        forced_cfg = load_config(args.config, args.overlay, args.num_filters, amp=True, channels_last=True,
                                 **trainer_overrides)
        variants.append(config_variant("bf16+cl", "configs/train.json with amp and channels_last forced on "
                                       f"(1 step / 1 inference per round, {slow['rounds']} round(s))",
                                       forced_cfg, batch, **slow))
    if args.compile:
        try:
            _disable_compile_caches()
            variants.append(baseline_variant("compiled", "torch.compile of the baseline network (fp32, default mode)",
                                             *plain_parts(), batch, compile_net=True, **fast))
        except Exception as err:  # noqa: BLE001 - the benchmark goes on without it
            print(f"torch.compile unavailable, skipped: {type(err).__name__}: {err}")

    for phase in ("train", "infer"):
        run_phase(variants, phase, args.rounds)
    for v in variants:
        if v.name == "compiled":
            seconds_per_step = 1.0 / _median(v.results["train_steps_per_s"])
            v.results["compile_s"] = v.results["train_warmup_s"] - seconds_per_step * v.warmup

    summary = print_report(data, variants, shape)
    env["load_average_end"] = load_average()
    print(f"\nload average at the end {_fmt(env['load_average_end'], '.2f')} on {os.cpu_count()} CPUs "
          "(other processes on the machine slow all variants; compare ratios, not absolute times)")
    results = {"environment": env, "args": {k: json.loads(json.dumps(v, default=str)) for k, v in vars(args).items()},
               "data_loading": data, "variants": summary}
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nsaved {out}")
    return results


if __name__ == "__main__":
    main()
