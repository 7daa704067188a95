"""SWEEP_QUICK_START.md, command by command.

Every command in the guide's shell blocks must match exactly one entry of `COVERAGE`,
which says how it is exercised:

- `run`: run as written (numbers shrunk by `shrink`, test-size overrides added by
  `append`) in a sandbox on tiny synthetic data in the competition layout, by
  `test_cheap_commands_run_as_written`, and again by the end-to-end test;
- `slow`: run as written by `test_the_whole_guide_end_to_end` only (integration, slow),
  and also covered by the existing tests it names, so that it stays covered when slow
  tests are deselected;
- `named`: cannot run in a test (W&B online); covered by the existing tests it names.

A `verify` function replaces running a command that a test cannot run as written
(installers, a TensorBoard server, `wandb sync`) with a check of what it needs.

A command added to the guide without an entry, an entry no command uses, a named test
that does not exist, or a `--flag` that the command's `--help` does not list fails here.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "SWEEP_QUICK_START.md"
SHELL_FENCES = ("bash", "sh", "shell")
PLACEHOLDERS = ("<sweep>", "<run>")
CMD_TIMEOUT_S = 900

# Fixed values that shrink the shipped HRNet-W44 1280 sweep and the CPU preset to a run of
# seconds; the parameter names and the sweep's structure stay those of the shipped file.
TINY = {
    "models.name": "hrnet_w18_small",
    "models.pretrained": False,
    "models.decoder.inner_channels": 16,
    "data.image_height": 64,
    "data.image_width": 64,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "trainer.max_epochs": 1,
    "models.scheduler.T_max": 1,
    "trainer.progress_bar": False,
    "callbacks.early_stopping.enabled": False,
}
TINY_ARGS = tuple(
    f"{k}={str(v).lower() if isinstance(v, bool) else v}"
    for k, v in TINY.items()
    if k not in ("models.name", "models.pretrained")
)  # the CPU preset has them


# ----------------------------------------------------------------------------- the guide


@dataclass(frozen=True)
class Command:
    text: str  # continuation lines joined, comment dropped, single spaces
    line: int  # 1-based line in the guide

    def __str__(self) -> str:
        return f"SWEEP_QUICK_START.md:{self.line}: {self.text}"


def guide_commands(text: str) -> list[Command]:
    """The commands of every ```bash / ```sh / ```shell block, in order."""
    out: list[Command] = []
    fence: str | None = None
    pending, start = "", 0
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:].strip() or "text")
            continue
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = n
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        tokens = shlex.split(pending, comments=True)
        pending = ""
        if tokens:
            out.append(Command(" ".join(tokens), start))
    return out


# ----------------------------------------------------------------------------- the sandbox


@dataclass
class Sandbox:
    """A working folder laid out like the repository root, and the environment the
    guide's commands build up (`export` lines) and refer to (`<sweep>`, `<run>`)."""

    root: Path
    env: dict
    pipeline: bool
    subs: dict = field(default_factory=dict)
    log: list = field(default_factory=list)

    def substitute(self, text: str) -> str:
        text = text.replace("/path/to/data", str(self.root / "data"))
        for key in PLACEHOLDERS:
            if key in text:
                text = text.replace(key, self.resolve(key))
        return text

    def resolve(self, key: str) -> str:
        if key not in self.subs and key == "<run>" and "<sweep>" in self.subs:
            from hrnet_sweep.sweep.engine import LocalSweep

            runs = [
                r
                for r in LocalSweep(self.root / "outputs" / "sweeps" / self.subs["<sweep>"]).runs()
                if r.state == "finished"
            ]
            if runs:
                self.subs["<run>"] = runs[0].run_id
        if key not in self.subs:
            raise AssertionError(f"{key} is used before a command of the guide defines it")
        return self.subs[key]


def _competition_layout(root: Path, splits: dict | None = None) -> dict:
    """Synthetic receipts in the layout of the competition (jsons/, images/<split>/).
    Returns the annotations of every split (the test split's stays out of data/)."""
    from hrnet_sweep.synth import generate

    raw = root / "_synth"
    splits = splits or {"train": 10, "val": 3, "test": 3}
    generate(
        raw, num_images=sum(splits.values()), seed=5, width=240, height=320, splits=splits, korean=False, progress=False
    )
    docs = {}
    for split in ("train", "val", "test"):
        doc = json.loads((raw / f"{split}.json").read_text())
        (root / "data" / "images" / split).mkdir(parents=True, exist_ok=True)
        for name in doc["images"]:
            shutil.copy(raw / "images" / name, root / "data" / "images" / split / name)
        if split != "test":
            (root / "data" / "jsons").mkdir(parents=True, exist_ok=True)
            (root / "data" / "jsons" / f"{split}.json").write_text(json.dumps(doc))
        docs[split] = doc
    shutil.rmtree(raw)
    return docs


def _fake_predictions(doc: dict, seed: int) -> dict[str, list[np.ndarray]]:
    """Ground truth moved by a pixel or two, and every 7th word missed."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, img in doc["images"].items():
        polys = [np.asarray(w["points"], dtype=np.float32) for w in img["words"].values()]
        out[name] = [p + rng.integers(-2, 3, size=2) for i, p in enumerate(polys) if i % 7 != 3]
    return out


def _env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "HRNET_SWEEP_DATA")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        WANDB_MODE="offline",  # never a real W&B sweep from a test, whatever the machine's login
        WANDB_DIR=str(root),
        MPLBACKEND="Agg",
    )
    return env


def make_sandbox(root: Path, *, pipeline: bool) -> Sandbox:
    docs = _competition_layout(root)
    shutil.copy(REPO / "start_sweep.sh", root / "start_sweep.sh")
    if pipeline:
        # the shipped sweeps, with the HRNet-W44 plan shrunk to test size (fixed values only)
        shutil.copytree(REPO / "sweeps", root / "sweeps")
        plan = yaml.safe_load((REPO / "sweeps" / "hrnet_w44_1280.yaml").read_text())
        plan["parameters"].update({k: {"value": v} for k, v in TINY.items()})
        (root / "sweeps" / "hrnet_w44_1280.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    else:
        (root / "sweeps").symlink_to(REPO / "sweeps")
        # what `predict` writes in the guide, made from jittered ground truth
        from hrnet_sweep.formats import write_submission

        write_submission(root / "val_ensemble.csv", _fake_predictions(docs["val"], 0))
        write_submission(root / "val_fold0.csv", _fake_predictions(docs["val"], 1))
        write_submission(root / "submission.csv", _fake_predictions(docs["test"], 2))
    return Sandbox(root, _env(root), pipeline)


# ----------------------------------------------------------------------------- checks for what cannot run


def _verify_make_install(sb: Sandbox, cmd: str) -> None:
    """`make install` and `source .venv/bin/activate`: the Makefile's recipe creates .venv
    and installs the package editable (printed by `make -n`, which runs nothing)."""
    makefile = (REPO / "Makefile").read_text()
    assert "VENV ?= .venv" in makefile and "-m venv $(VENV)" in makefile and "-e '.[test]'" in makefile
    if shutil.which("make"):
        out = subprocess.run(
            ["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        assert "-m venv .venv" in out and "-e '.[test]'" in out, out


def _verify_editable_install(sb: Sandbox, cmd: str) -> None:
    """`pip install -e .`: the package the tests import is this checkout, with its console script."""
    import hrnet_sweep

    assert Path(hrnet_sweep.__file__).resolve().is_relative_to(REPO)
    scripts = {e.name: e.value for e in importlib.metadata.distribution("hrnet-sweep").entry_points}
    assert scripts.get("hrnet_sweep") == "hrnet_sweep.cli:main"


def _verify_tensorboard(sb: Sandbox, cmd: str) -> None:
    """TensorBoard is installed with the package; after training, every run has event files."""
    from hrnet_sweep.config import LoggingConfig

    assert (Path(sys.executable).parent / "tensorboard").exists() or shutil.which("tensorboard")
    assert LoggingConfig().tensorboard is True
    if sb.pipeline:
        logdir = sb.root / cmd.split("--logdir ", 1)[1].split()[0]
        assert list(logdir.glob("*/logs/events.out.tfevents.*")), f"no TensorBoard events under {logdir}"


def _verify_wandb_sync(sb: Sandbox, cmd: str) -> None:
    """`wandb sync` needs the network: check that the offline run folder it uploads exists."""
    pattern = sb.substitute(cmd).split("wandb sync ", 1)[1]
    found = [p for p in sb.root.glob(pattern) if p.is_dir()]
    assert found, f"no offline W&B run folder matches {pattern}"


# ----------------------------------------------------------------------------- coverage


@dataclass(frozen=True)
class Cover:
    pattern: str  # full match against Command.text
    how: Literal["run", "slow", "named"]
    tests: tuple[str, ...] = ()  # existing tests that exercise the command too ("file::name")
    shrink: tuple[tuple[str, str], ...] = ()  # (regex, replacement): smaller numbers, same flags
    append: tuple[str, ...] = ()  # added at the end: test size
    verify: Callable[[Sandbox, str], None] | None = None  # instead of running it
    expect: str | None = None  # regex the output must contain


COVERAGE: tuple[Cover, ...] = (
    # 1. install
    Cover(r"make install", "run", verify=_verify_make_install),
    Cover(r"source \.venv/bin/activate", "run", verify=_verify_make_install),
    Cover(r"hrnet_sweep --help", "run", expect=r"commands:"),
    Cover(r"pip install -e \.", "run", verify=_verify_editable_install),
    # 2. data
    Cover(r"export HRNET_SWEEP_DATA=\S+", "run"),
    Cover(r"hrnet_sweep train preset=hrnet_w44_1280 --dry-run", "run", expect=r"image_height: 1280"),
    Cover(r"hrnet_sweep synth --out synth --num \d+", "run", shrink=((r"--num \d+", "--num 8"),)),
    Cover(
        r"hrnet_sweep train preset=hrnet_w18_small_cpu data\.root=synth( \S+=\S+)*",
        "slow",
        append=TINY_ARGS,
        tests=("tests/test_train_e2e.py::test_train_checkpoint_resume_predict_eval",),
        expect=r"run finished",
    ),
    # 3. W&B or offline
    Cover(
        r"wandb login",
        "named",
        tests=(
            "tests/test_launcher.py::test_wandb_credentials",
            "tests/test_launcher.py::test_sweep_goes_to_wandb_with_credentials",
        ),
    ),
    Cover(r"export WANDB_MODE=offline", "run", tests=("tests/test_launcher.py::test_wandb_credentials",)),
    # 4. check
    Cover(r"hrnet_sweep check( sweeps/\w+\.yaml)+", "run", expect=r"(OK|0 error\(s\))"),
    Cover(r"hrnet_sweep explain sweeps/\w+\.yaml", "run", expect=r"band"),
    # 5. start
    Cover(
        r"\./start_sweep\.sh sweeps/hrnet_w44_1280\.yaml --run-cap \d+",
        "named",
        tests=(
            "tests/test_launcher.py::test_sweep_goes_to_wandb_with_credentials",
            "tests/test_launcher.py::test_one_pinned_agent_per_gpu",
        ),
    ),
    Cover(
        r"\./start_sweep\.sh sweeps/hrnet_w44_1280\.yaml --local --run-cap \d+",
        "slow",
        shrink=((r"--run-cap \d+", "--run-cap 1"),),
        expect=r"local sweep created",
        tests=(
            "tests/test_launcher.py::test_local_sweep_runs_pinned_agents_on_the_embedded_engine",
            "tests/test_sweep_integration.py::test_cpu_demo_sweep_with_two_agents",
        ),
    ),
    Cover(
        r"hrnet_sweep sweep --resume <sweep>",
        "slow",
        tests=(
            "tests/test_launcher.py::test_sweep_without_credentials_runs_on_the_embedded_engine",
            "tests/test_sweep_integration.py::test_cpu_demo_sweep_with_two_agents",
        ),
    ),
    # 6. watch
    Cover(
        r"hrnet_sweep status <sweep>",
        "slow",
        expect=r"finished",
        tests=("tests/test_agent.py::test_status_and_clean_keep_the_best_runs_checkpoints",),
    ),
    Cover(r"tensorboard --logdir outputs", "run", verify=_verify_tensorboard),
    Cover(
        r"wandb sync outputs/<run>/wandb/offline-run-\*",
        "slow",
        verify=_verify_wandb_sync,
        tests=("tests/test_sweep_integration.py::test_cpu_demo_sweep_with_two_agents",),
    ),
    # 7. best
    Cover(
        r"hrnet_sweep best <sweep> (--export preset\.yaml|--top \d+)",
        "slow",
        tests=(
            "tests/test_best.py::test_best_on_a_local_sweep",
            "tests/test_best.py::test_best_cli_prints_table_and_exports",
        ),
    ),
    Cover(
        r"hrnet_sweep clean <sweep> --keep-top \d+",
        "slow",
        tests=("tests/test_agent.py::test_status_and_clean_keep_the_best_runs_checkpoints",),
    ),
    # 8-10. retrain, tune, predict
    Cover(
        r"hrnet_sweep kfold preset\.yaml --folds 0-4",
        "slow",
        shrink=((r"--folds 0-4", "--folds 0-1"),),
        tests=("tests/test_kfold.py::test_kfold_skips_finished_and_resumes_interrupted",),
    ),
    Cover(
        r"hrnet_sweep tune-postprocess preset\.yaml",
        "slow",
        tests=("tests/test_ensemble.py::test_oof_cache_tune_and_predict_from_the_preset",),
    ),
    Cover(
        r"hrnet_sweep predict preset\.yaml .+",
        "slow",
        tests=(
            "tests/test_ensemble.py::test_oof_cache_tune_and_predict_from_the_preset",
            "tests/test_ensemble.py::test_predict_routing_shipped_preset_and_plain_checkpoints",
        ),
    ),
    Cover(r"hrnet_sweep validate-submission submission\.csv .+", "run", expect=r": VALID"),
    # 11. analysis
    Cover(r"hrnet_sweep eval --gt \S+ --pred \S+", "run", expect=r"(?i)h-?mean"),
    Cover(r"hrnet_sweep analyze \S+ .+", "run", expect=r"report"),
    Cover(r"hrnet_sweep compare \S+ \S+ .+", "run"),
    # 12. studies: the launcher creates each study sweep (no runs: a study trains HRNet-W44 for hours)
    Cover(
        r"\./start_sweep\.sh sweeps/\w+_study(_quick)?\.yaml( --local)?",
        "run",
        append=("--create-only",),
        expect=r"local sweep created: \S+ \(grid\)",
        tests=("tests/test_studies.py::test_embedded_engine_hands_out_each_grid_point_once",),
    ),
)


def _cover_of(cmd: Command) -> Cover:
    matches = [c for c in COVERAGE if re.fullmatch(c.pattern, cmd.text)]
    assert matches, f"{cmd}\n  is not exercised by any test: add it to COVERAGE in tests/test_quick_start.py"
    assert len(matches) == 1, f"{cmd}\n  matches several COVERAGE entries: {[c.pattern for c in matches]}"
    return matches[0]


@pytest.fixture(scope="module")
def commands() -> list[Command]:
    return guide_commands(GUIDE.read_text(encoding="utf-8"))


def _run(sb: Sandbox, cmd: Command, cover: Cover) -> None:
    if cover.verify is not None:
        cover.verify(sb, cmd.text)
        return
    text = cmd.text
    for pattern, repl in cover.shrink:
        text = re.sub(pattern, repl, text)
    text = " ".join([sb.substitute(text), *cover.append])
    if text.startswith("export "):
        name, _, value = text[len("export ") :].partition("=")
        sb.env[name] = value
        return
    proc = subprocess.run(
        ["bash", "-c", text], cwd=sb.root, env=sb.env, capture_output=True, text=True, timeout=CMD_TIMEOUT_S
    )
    out = proc.stdout + proc.stderr
    sb.log.append(f"$ {text}\n{out[-4000:]}")
    assert proc.returncode == 0, f"{cmd}\n  ran as: {text}\n  exit {proc.returncode}\n{out[-6000:]}"
    if cover.expect:
        assert re.search(cover.expect, out), f"{cmd}\n  output lacks /{cover.expect}/:\n{out[-3000:]}"
    created = re.search(r"local sweep created: (\S+)", out)
    if created and "<sweep>" not in sb.subs:
        sb.subs["<sweep>"] = created.group(1)


# ----------------------------------------------------------------------------- the mapping itself


@pytest.mark.unit
def test_guide_commands_are_parsed():
    text = "x\n```bash\na --b \\\n  c  # note\n\n# only a comment\n```\n```text\nnot a command\n```\n```sh\nd\n```\n"
    assert [(c.text, c.line) for c in guide_commands(text)] == [("a --b c", 3), ("d", 12)]


@pytest.mark.unit
def test_every_guide_command_is_covered(commands):
    assert len(commands) >= 20
    used = set()
    for cmd in commands:
        cover = _cover_of(cmd)
        used.add(cover.pattern)
        for key in re.findall(r"<[^>]+>", cmd.text):
            assert key in PLACEHOLDERS, f"{cmd}\n  unknown placeholder {key}; the test can fill {PLACEHOLDERS}"
        if cover.how == "run" and "<" in cmd.text and cover.verify is None:
            raise AssertionError(f"{cmd}\n  needs a sweep or run id: mark it slow (the end-to-end test has one)")
    unused = [c.pattern for c in COVERAGE if c.pattern not in used]
    assert not unused, f"COVERAGE entries that no command of the guide uses (remove them): {unused}"


@pytest.mark.unit
def test_named_tests_exist():
    for cover in COVERAGE:
        if cover.how in ("slow", "named"):
            assert cover.tests, f"{cover.pattern}: a {cover.how} command must name the existing tests covering it"
        for ref in cover.tests:
            path, _, name = ref.partition("::")
            source = (REPO / path).read_text(encoding="utf-8") if (REPO / path).is_file() else ""
            assert re.search(rf"^(async )?def {re.escape(name)}\(", source, re.M), f"{cover.pattern}: no test {ref}"


def _help_text(sub: str) -> str:
    """What `hrnet_sweep <sub> --help` prints (the train command prints its usage)."""
    from hrnet_sweep import cli

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = cli.run_command(sub, ["--help"])
        except SystemExit as exit_:  # argparse
            code = exit_.code
    assert code in (0, None), f"hrnet_sweep {sub} --help exited {code}"
    return buf.getvalue()


@pytest.mark.unit
def test_every_flag_in_the_guide_is_one_the_command_has(commands):
    flags: dict[str, set[str]] = {}
    for cmd in commands:
        tokens = cmd.text.split()
        if tokens[0] == "hrnet_sweep" and tokens[1:2] != ["--help"]:
            sub = tokens[1]
        elif tokens[0] == "./start_sweep.sh":
            sub = "sweep"  # start_sweep.sh only calls `hrnet_sweep sweep`
        else:
            continue
        flags.setdefault(sub, set()).update(t.split("=")[0] for t in tokens if t.startswith("--"))
    assert {"sweep", "best", "kfold", "predict", "analyze", "compare"} <= set(flags)
    for sub, used in sorted(flags.items()):
        text = _help_text(sub)
        missing = sorted(f for f in used if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))
        assert not missing, f"hrnet_sweep {sub} --help does not list {missing}"


# ----------------------------------------------------------------------------- running the guide


@pytest.mark.integration
def test_cheap_commands_run_as_written(commands, tmp_path):
    """Every `run` command, in the guide's order, in a sandbox with tiny synthetic data in
    the competition layout and the prediction files the guide's `predict` would write."""
    sb = make_sandbox(tmp_path, pipeline=False)
    ran = 0
    for cmd in commands:
        cover = _cover_of(cmd)
        if cover.how == "run":
            _run(sb, cmd, cover)
            ran += 1
    assert ran >= 15
    assert (tmp_path / "analysis" / "train_gt" / "report.md").is_file()
    assert (tmp_path / "val_ensemble_analysis" / "report.md").is_file()
    starts = sum("--create-only" in _cover_of(c).append for c in commands)
    assert len(list((tmp_path / "outputs" / "sweeps").iterdir())) == starts  # one local sweep per study line


@pytest.mark.integration
@pytest.mark.slow
def test_the_whole_guide_end_to_end(commands, tmp_path):
    """From install to analysis in the guide's order: the HRNet-W44 sweep (shrunk to a
    tiny CPU model) on the embedded engine, best, k-fold retrain, post-processing tuning,
    fold-ensemble prediction, submission check, evaluation, analysis and comparison."""
    sb = make_sandbox(tmp_path, pipeline=True)
    try:
        for cmd in commands:
            cover = _cover_of(cmd)
            if cover.how != "named":
                _run(sb, cmd, cover)
    finally:
        print("\n\n".join(sb.log)[-20000:])
    preset = yaml.safe_load((tmp_path / "preset.yaml").read_text())
    assert preset["models"]["postprocess"]  # tuned values written back into the exported preset
    summary = json.loads((tmp_path / "outputs" / "preset-kfold" / "kfold_summary.json").read_text())
    assert [summary["folds"][k]["state"] for k in ("0", "1")] == ["finished", "finished"]
    from hrnet_sweep.formats import read_submission

    tests = sorted(p.name for p in (tmp_path / "data" / "images" / "test").iterdir())
    assert sorted(read_submission(tmp_path / "submission.csv")) == tests
    assert (tmp_path / "submission.json").is_file()
    assert (tmp_path / "compare_val_fold0_vs_val_ensemble" / "report.md").is_file()
    assert "# provenance (hrnet_sweep best):" in (tmp_path / "preset.yaml").read_text()


@pytest.mark.unit
def test_a_command_without_coverage_or_with_two_fails():
    with pytest.raises(AssertionError, match="not exercised by any test"):
        _cover_of(Command("hrnet_sweep frobnicate --all", 1))
    with pytest.raises(AssertionError, match="not exercised by any test"):
        _cover_of(Command("hrnet_sweep kfold preset.yaml --folds 0-4 --gpus 0,1", 1))
    assert _cover_of(Command("hrnet_sweep kfold preset.yaml --folds 0-4", 1)).how == "slow"
