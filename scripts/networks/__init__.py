"""Networks of the landmark bundle; each module holds one network family."""

from .scn import SpatialConfigurationNet

__all__ = ["SpatialConfigurationNet"]
