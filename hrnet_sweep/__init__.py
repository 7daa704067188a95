"""hrnet-sweep: sweeps, k-fold retrains and probability-map ensembles for DBNet receipt
text detectors. See ARCHITECTURE.md for the layout."""

from .constants import METRIC

__version__ = "0.1.0"
__all__ = ["METRIC", "__version__"]
