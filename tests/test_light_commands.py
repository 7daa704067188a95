"""The light commands stay light: `check`, `explain`, `status`, `eval`,
`validate-submission`, `best` on a local sweep and `train --dry-run` never import the deep
learning stack (torch, torchvision, timm, Lightning), so they answer at once (about 0.3 s
on a 2-core machine instead of 4-7 s).

Each command runs for real in a fresh interpreter; the test reads `sys.modules` after it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _util import REPO

HEAVY = ("torch", "torchvision", "timm", "pytorch_lightning", "lightning")
GT = {"images": {"a.jpg": {"words": {"0001": {"points": [[0, 0], [40, 0], [40, 10], [0, 10]]}}}}}


def _imports_after(argv: list[str], cwd) -> tuple[int, list[str]]:
    code = (
        "import sys, json\nfrom hrnet_sweep.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
        "except SystemExit as e:\n    rc = e.code\n"
        f"print(json.dumps([rc, sorted(m for m in {HEAVY!r} if m in sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, capture_output=True, text=True, timeout=120)
    rc, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    return rc, heavy


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("light")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hrnet_sweep",
            "sweep",
            str(REPO / "sweeps" / "cpu_demo.yaml"),
            "--local",
            "--create-only",
        ],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (sweep,) = (root / "outputs" / "sweeps").iterdir()
    (root / "gt.json").write_text(json.dumps(GT))
    (root / "sub.csv").write_text("filename,polygons\na.jpg,0 0 40 0 40 10 0 10\n")
    return root, sweep


COMMANDS = {
    "check": lambda s: ["check", str(REPO / "sweeps" / "hrnet_w44_1280.yaml")],
    "explain": lambda s: ["explain", str(REPO / "sweeps" / "hrnet_w44_1280.yaml")],
    "status": lambda s: ["status", str(s)],
    "best on a local sweep": lambda s: ["best", str(s)],  # no finished run yet: exit 2, still light
    "eval": lambda s: ["eval", "--gt", "gt.json", "--pred", "sub.csv"],
    "validate-submission": lambda s: ["validate-submission", "sub.csv"],
    "train --dry-run": lambda s: ["train", "preset=hrnet_w44_1280", "--dry-run"],
}


@pytest.mark.integration
@pytest.mark.parametrize("name", list(COMMANDS))
def test_light_commands_do_not_import_the_deep_learning_stack(name, local_sweep):
    root, sweep = local_sweep
    rc, heavy = _imports_after(COMMANDS[name](sweep), root)
    assert rc in (0, 2) and heavy == [], f"{name} exited {rc} and imported {heavy}"
