"""Every output file of the bundle, one module per format; this package re-exports their public names.

- :mod:`~scripts.writers.files`: atomic durable writes, safe output paths, generic CSV/JSON tables.
- :mod:`~scripts.writers.landmarks`: :class:`LandmarkResult`, per-image JSON, the folder CSV, failed files.
- :mod:`~scripts.writers.images`: overlay images (and the shrunk preview they are drawn on).
- :mod:`~scripts.writers.label_image`: the landmark label image, written and read back (its one owner).
- :mod:`~scripts.writers.slicer_markups`: 3D Slicer markups (``.mrk.json``) in the file's LPS frame.
- :mod:`~scripts.writers.dicom_sr`: DICOM Comprehensive SR (highdicom, imported on first use).
"""

from scripts.writers.dicom_sr import (
    PRIVATE_SCHEME,
    is_dicom,
    landmark_report,
    pixel_to_scoord,
    require_highdicom,
    scoord_to_pixel,
    write_landmark_sr,
)
from scripts.writers.files import (
    PathLike,
    SymlinkInOutputError,
    atomic_write,
    fsync_folder,
    output_path,
    refuse_symlinks,
    remove_stale_temporaries,
    temporary_name_pattern,
    write_csv,
    write_json,
    write_text,
)
from scripts.writers.images import OVERLAY_FORMATS, downscale_image, render_overlay, write_overlay
from scripts.writers.label_image import landmark_label_image, landmarks_from_label_image, write_label_image
from scripts.writers.landmarks import (
    COORDINATE_CONVENTION,
    STATUSES,
    LandmarkCsvWriter,
    LandmarkResult,
    landmark_csv_header,
    landmark_csv_row,
    landmark_result_from_document,
    landmarks_document,
    write_error_csv,
    write_landmarks_json,
)
from scripts.writers.slicer_markups import (
    MARKUPS_SCHEMA_URL,
    PIXEL_UNITS,
    ImageFrame,
    image_frame,
    markups_document,
    points_to_lps,
    write_markups_json,
)
