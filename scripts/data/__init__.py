"""Reading inputs: image files (:mod:`~scripts.data.image_reader`) and dataset folders
(:mod:`~scripts.data.datasets`, re-exported here, so ``scripts.data.datasets.LandmarkDataset`` works).

The synthetic demo data (:mod:`scripts.data.synthetic`, drawn by :mod:`scripts.data.phantoms`) is not
imported here: it is a generator for demos and tests, not part of reading data.
"""

from scripts.data.datasets import (
    DatasetError,
    LandmarkDataset,
    default_split,
    load_datalist,
    split_off_tuning,
)
from scripts.data.image_reader import (
    IMAGE_SUFFIXES,
    PLAUSIBLE_SPACING_MM,
    ImageReadError,
    ImageRecord,
    image_suffix,
    is_image_candidate,
    read_image,
    read_image_size,
)
