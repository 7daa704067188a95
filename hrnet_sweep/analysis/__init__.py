"""`hrnet_sweep analyze` and `hrnet_sweep compare`: what is in a prediction file, and where
it goes wrong.

The package has three layers, read top to bottom:

1. pure functions over polygons (`box_geometry`, `image_flags`, `count_outliers`,
   `error_types`), tested on constructed boxes (`_rules`);
2. `analyze(...) -> AnalysisReport` (`report`) and `compare(...) -> CompareReport`
   (`comparison`), which load the files (`_load`), score every image with
   `metric.evaluate` (the one CLEval of the project; `_model`) and write `report.md`
   (`_markdown`), `summary.json` and the PNGs of `plots` (overlays: `_overlays`) into
   `out_dir`;
3. `main` / `main_compare` (`cli`), the thin CLI wrappers that also print a rich table.

Every threshold lives in `Rules`, so the report can print the rule next to each count.
`plots` imports matplotlib, so it is imported only where a PNG is drawn.
"""

from ._rules import Rules, box_geometry, count_outliers, error_types, image_flags
from .cli import main, main_compare
from .comparison import CompareReport, compare
from .report import AnalysisReport, analyze

__all__ = [
    "AnalysisReport",
    "CompareReport",
    "Rules",
    "analyze",
    "box_geometry",
    "compare",
    "count_outliers",
    "error_types",
    "image_flags",
    "main",
    "main_compare",
]
