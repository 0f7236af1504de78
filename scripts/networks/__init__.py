"""Networks of the landmark bundle; each module holds one network family."""

from .posenet import ConfidenceDiscriminator, PoseDiscriminator, StackedHourglass
from .scn import SpatialConfigurationNet

__all__ = ["SpatialConfigurationNet", "StackedHourglass", "PoseDiscriminator", "ConfidenceDiscriminator"]
