"""Steps the bundle configs run in their ``initialize`` lists: the removed ``preset`` key, the learning-rate
options and the demo data.

``configs/train.json`` and ``configs/inference.json`` hold the default model contract (the synthetic
demo hand, 37 landmarks on a 128 x 128 grid); other data sets are overlays merged after them, e.g.::

    python -m monai.bundle run training --config_file "['configs/train.json','configs/hand.json']"

The demo dataset is written only by :func:`prepare_demo_dataset`, an explicit ``initialize`` step,
and only into the bundle's own ``demo_data/<kind>`` folder: reading ``dataset_dir`` writes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["OVERLAYS", "reject_preset", "check_lr_options", "prepare_demo_dataset"]

logger = logging.getLogger(__name__)

#: the former ``--preset`` values and the config files that replace them
OVERLAYS = {
    "demo_hand": "configs/train.json",
    "hand": "configs/train.json + configs/hand.json",
    "lower_limb": "configs/train.json + configs/lower_limb.json",
}


def reject_preset(preset) -> None:
    """Raise a ``ValueError`` naming the overlay that replaces ``--preset`` (``None``: nothing to do).

    The bundle had a ``presets`` dict chosen by ``--preset NAME``; the data sets are now overlay
    configs. The configs keep a ``preset`` key set to ``null`` so that an old command stops here
    instead of silently training the default.
    """
    if preset is None:
        return
    name = str(preset)
    if name not in OVERLAYS:
        raise ValueError(
            f"--preset was removed (and {name!r} was never one): the data sets are overlay configs, "
            + "; ".join(f"{k}: {v}" for k, v in OVERLAYS.items()) + "."
        )
    overlay = "" if name == "demo_hand" else f",'configs/{name}.json'"
    raise ValueError(
        f"--preset was removed: --preset {name} is now {OVERLAYS[name]}: python -m monai.bundle run training "
        f"--config_file \"['configs/train.json'{overlay}]\" (evaluate.json or multi_gpu_train.json go last; "
        f"inference: --config_file \"['configs/inference.json'{overlay}]\")."
    )


def check_lr_options(lr_decay, lr_schedule) -> None:
    """Raise a ``ValueError`` when two learning-rate schedules would both set the rate: ``--lr_decay true``
    (``LinearLR`` per epoch) and an ``--lr_schedule`` other than ``none`` (per iteration, the default
    ``cosine`` of ``configs/train.json``)."""
    from scripts.utils import as_bool

    if as_bool(lr_decay) and str(lr_schedule) != "none":
        raise ValueError(
            f"--lr_decay true and --lr_schedule {lr_schedule} would both set the learning rate: pass "
            "--lr_schedule none with --lr_decay true, or drop --lr_decay (the schedule decays the rate itself)."
        )


def prepare_demo_dataset(dataset_dir, demo_dir, kind: str) -> str | None:
    """Write the synthetic demo dataset ``kind`` to ``demo_dir`` when ``dataset_dir`` is that folder or inside it.

    Args:
        dataset_dir: the folder the workflow reads (``@dataset_dir``; inference reads ``<demo_dir>/images``).
        demo_dir: the bundle's demo folder for ``kind`` (``@bundle_root + '/demo_data/' + @demo_kind``).
        kind: ``"hand"`` or ``"lower_limb"`` (``scripts.data.synthetic.DEMO_KINDS``).

    Returns:
        the demo folder's path when it was used (written now or already complete), else ``None``:
        any other ``dataset_dir`` is the user's data and is never written to.
    """
    target, demo = Path(dataset_dir).expanduser().absolute(), Path(demo_dir).expanduser().absolute()
    if target != demo and demo not in target.parents:
        return None
    from scripts.data.synthetic import generate_demo_dataset  # the generator only loads when the demo data is used

    existed = (demo / "landmarks.csv").is_file()
    path = generate_demo_dataset(demo, kind=kind)
    if not existed:
        logger.info(f"wrote the synthetic demo dataset ({kind}) to {path}; pass --dataset_dir DIR for your data")
    return str(path)
