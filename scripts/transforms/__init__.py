"""Landmark-aware MONAI transforms, one module per job, array and dictionary versions side by side.

- :mod:`~scripts.transforms.io`: load an image with its frames and landmarks; landmarks from a label image.
- :mod:`~scripts.transforms.spatial`: resize (stretch or letterbox) and random affine + elastic, points moved with the image.
- :mod:`~scripts.transforms.intensity`: histogram matching, percentile normalisation, random scale and shift.
- :mod:`~scripts.transforms.targets`: Gaussian heatmaps and the landmark mask.
- :mod:`~scripts.transforms.post`: heatmaps to points (network, original px, mm), results and label images.

Every public name is re-exported here (as ``monai.transforms`` does), so configs write
``scripts.transforms.ResizeWithLandmarksd``. Points follow :mod:`scripts.coords`: ``(x, y)`` pixels,
integer = pixel centre, NaN = missing; sample keys are :class:`scripts.keys.LandmarkKeys`.
"""

from scripts.transforms.intensity import (
    HistogramMatch,
    HistogramMatchd,
    RandIntensityScaleShift,
    RandIntensityScaleShiftd,
    RobustNormalizeIntensity,
    RobustNormalizeIntensityd,
)
from scripts.transforms.io import LabelImageToLandmarks, LandmarksFromLabelImaged, LoadLandmarkImaged
from scripts.transforms.post import (
    DecodeLandmarks,
    DecodeLandmarksd,
    LandmarkLabelOutputd,
    LandmarksToOriginal,
    LandmarksToOriginald,
    landmark_result,
)
from scripts.transforms.spatial import (
    RandLandmarkAffineElastic,
    RandLandmarkAffineElasticd,
    ResizeWithLandmarks,
    ResizeWithLandmarksd,
)
from scripts.transforms.targets import LandmarkHeatmap, LandmarkHeatmapd, LandmarkMask, LandmarkMaskd
