"""Result records of the CLEval metric (one image, many images) and the score formula."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ImageResult:
    """CLEval detection counts and scores of one image."""

    precision: float
    recall: float
    hmean: float
    num_gt: int  # GT polygons scored (4 or more points)
    num_det: int  # detections scored (after the cap, 4 or more points)
    num_char_gt: int  # pseudo characters of all GT boxes (recall denominator)
    num_char_det: int  # PCCs inside matched detections + FP characters (precision denominator)
    num_char_tp: int  # distinct PCCs inside a matched detection
    num_char_fp: int  # characters charged to unmatched detections
    gran_recall: float  # split penalty
    gran_precision: float  # merge penalty
    num_splitted: int
    num_merged: int
    num_char_overlapped: int  # PCCs counted by more than one matched detection

    def to_dict(self) -> dict:
        return asdict(self)


_COUNT_KEYS = (
    "num_gt",
    "num_det",
    "num_char_gt",
    "num_char_det",
    "num_char_tp",
    "num_char_fp",
    "num_splitted",
    "num_merged",
    "num_char_overlapped",
)


@dataclass
class EvalResult:
    """Scores over a set of images.

    `precision`, `recall`, `hmean` are the mean of the per-image values (what the
    competition's validation logs); `micro` holds the scores of the summed counts (CLEval's
    own dataset-level aggregation) and the sums; `per_image` maps image name to
    `ImageResult.to_dict()`. `ignored_images` lists prediction images absent from the
    ground truth: like the competition, scoring ignores them.
    """

    precision: float
    recall: float
    hmean: float
    micro: dict
    per_image: dict[str, dict]
    ignored_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "hmean": self.hmean,
            "micro": self.micro,
            "per_image": self.per_image,
        }


def _scores(tp: float, gran_r: float, gran_p: float, n_gt: int, n_det: int) -> tuple[float, float, float]:
    recall = 0.0 if n_gt == 0 else max(0.0, tp - gran_r) / n_gt
    precision = 0.0 if n_det == 0 else max(0.0, tp - gran_p) / n_det
    hmean = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    return precision, recall, hmean
