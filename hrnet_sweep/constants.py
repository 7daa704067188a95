"""Names shared by every stage. One place, so logging, checkpointing, early stopping,
selection and the sweep files cannot drift apart (a test checks the shipped YAMLs)."""

METRIC = "val/hmean"
"""The metric the whole pipeline optimises: per-image macro CLEval H-Mean on validation."""
METRIC_GOAL = "maximize"
VAL_PRECISION = "val/precision"
VAL_RECALL = "val/recall"

DATA_ROOT_ENV = "HRNET_SWEEP_DATA"
"""Environment variable naming the data root when `data.root` is not given."""
CONTROL_DIR_ENV = "HRNET_SWEEP_CONTROL_DIR"
"""Set by the embedded sweep agent: the folder where a training run appends
`metrics.jsonl`, writes `status.json` at exit and looks for a `STOP` file at each
validation epoch end."""

MAX_DETECTIONS = 500
"""The competition scores at most this many detections per image."""
