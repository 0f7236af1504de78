"""Write a data overlay merged into a MONAI Label bundle copy, so that the app serves that model.

MONAI Label's ``monaibundle`` app reads ``configs/inference.json`` and ``configs/train.json`` alone and
takes the label names from ``configs/metadata.json``: it cannot merge ``configs/hand.json`` or
``configs/lower_limb.json`` as the command line does. This command merges them with MONAI's own
``ConfigParser.load_config_files`` (overrides and ``+`` merges, left to right) and writes the results,
flat, over the copy's ``configs/train.json`` and ``configs/inference.json``, and a ``metadata.json``
whose output channels match the overlay's ``num_landmarks``::

    python tools/monailabel/merge_bundle.py --bundle app/model/xray_landmarks --overlay configs/lower_limb.json

The source configs are the repository's (``--source``); the bundle copy must already hold ``configs/``
(e.g. ``tools/monailabel/roundtrip.py`` copies it). Overlays that only change data and the model
contract (``hand.json``, ``lower_limb.json``) apply to both configs; the adversarial overlay trains
another network and is not for this command. Where the overlay names a histogram-matching reference
(``reference_image_file``), the merged train.json reads it beside the model (``models/<name>``, where a
training run keeps it), since MONAI Label's datalist has no dataset folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from monai.bundle import ConfigParser  # noqa: E402

from scripts.writers import write_text  # noqa: E402

__all__ = ["metadata_for_landmarks", "merge_bundle"]

#: train.json's reference image, for MONAI Label: the copy a training run keeps beside the model
REFERENCE_BESIDE_MODEL = (
    "$os.path.join(@ckpt_dir, os.path.basename(@reference_image_file)) if @reference_image_file else None"
)


def metadata_for_landmarks(metadata: dict, landmark_names: list[str]) -> dict:
    """``metadata`` (the content of ``configs/metadata.json``) with its outputs sized for ``landmark_names``.

    What depends on the landmarks: ``outputs.pred`` (one heatmap channel per landmark, ``channel_def``
    numbered by label value with ``"0": "background"``), ``post_processed_outputs.pred`` (label values
    ``0..N``, same ``channel_def``) and ``post_processed_outputs.points`` (``N x 2``). Returns a new dict.
    """
    meta = copy.deepcopy(metadata)
    count = len(landmark_names)
    channel_def = {"0": "background", **{str(k + 1): name for k, name in enumerate(landmark_names)}}
    formats = meta["network_data_format"]
    formats["outputs"]["pred"]["num_channels"] = count
    formats["outputs"]["pred"]["channel_def"] = dict(channel_def)
    labels = formats["post_processed_outputs"]["pred"]
    labels["value_range"] = [0, count]
    labels["channel_def"] = dict(channel_def)
    formats["post_processed_outputs"]["points"]["spatial_shape"] = [count, 2]
    return meta


def _merged(base: Path, overlays: list[Path]) -> dict:
    return ConfigParser.load_config_files([str(base)] + [str(o) for o in overlays])


def merge_bundle(bundle: Path, overlays: list[Path], source: Path = ROOT / "configs") -> dict:
    """Write ``source``'s train.json and inference.json merged with ``overlays`` into ``bundle/configs``.

    Also writes ``bundle/configs/metadata.json`` (and ``bundle/metadata.json`` where the copy has one)
    from ``source/metadata.json`` with :func:`metadata_for_landmarks`. Every file is written atomically
    after all of them were built, so a failure leaves the copy as it was. Returns
    ``{"num_landmarks": N, "written": [paths]}``.
    """
    bundle, source = Path(bundle), Path(source)
    configs = bundle / "configs"
    if not configs.is_dir():
        raise FileNotFoundError(f"{configs}: no configs folder; copy the bundle there first")
    for overlay in overlays:
        if not Path(overlay).is_file():
            raise FileNotFoundError(f"{overlay}: overlay config not found")
    names = [Path(o).name for o in overlays]
    train = _merged(source / "train.json", overlays)
    try:
        inference = _merged(source / "inference.json", overlays)
    except (KeyError, ValueError) as error:
        raise ValueError(f"{', '.join(names)}: not a data overlay of inference.json ({error}); "
                         "only data overlays such as hand.json or lower_limb.json can be served") from error
    train["reference_image"] = REFERENCE_BESIDE_MODEL
    merged_from = ["train.json"] + names
    train["merged_from"], inference["merged_from"] = merged_from, ["inference.json"] + names

    parser = ConfigParser(inference)
    landmark_names = list(parser.get_parsed_content("landmark_names"))
    metadata = metadata_for_landmarks(json.loads((source / "metadata.json").read_text()), landmark_names)

    outputs = {configs / "train.json": train, configs / "inference.json": inference, configs / "metadata.json": metadata}
    if (bundle / "metadata.json").is_file() and not (bundle / "metadata.json").is_symlink():
        outputs[bundle / "metadata.json"] = metadata
    for path, content in outputs.items():
        write_text(path, json.dumps(content, indent=4) + "\n")
    return {"num_landmarks": len(landmark_names), "written": [str(p) for p in outputs]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="the app's bundle copy, e.g. app/model/xray_landmarks")
    p.add_argument("--overlay", action="append", required=True,
                   help="overlay config merged after train.json and inference.json (repeat for several, in order)")
    p.add_argument("--source", default=str(ROOT / "configs"), help="folder of the base configs and metadata.json")
    args = p.parse_args(argv)
    result = merge_bundle(Path(args.bundle), [Path(o) for o in args.overlay], Path(args.source))
    print(f"merged {' + '.join(args.overlay)}: {result['num_landmarks']} landmarks; wrote " + ", ".join(result["written"]))
    return result


if __name__ == "__main__":
    main()
