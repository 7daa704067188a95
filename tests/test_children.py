"""Child processes (`hrnet_sweep.children`): the environment every stage gives a child,
its own process group, and death with the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hrnet_sweep
from _util import pid_alive
from hrnet_sweep.children import PACKAGE_PARENT, child_env, kill_group, start


@pytest.mark.unit
def test_child_env_names_the_package_gpu_and_threads():
    env = child_env({"PATH": "/bin", "PYTHONPATH": f"/x{os.pathsep}{PACKAGE_PARENT}"}, gpu="1", threads=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2"
    assert env["PYTHONPATH"].split(os.pathsep) == [PACKAGE_PARENT, "/x"]  # first, and once
    assert Path(PACKAGE_PARENT) == Path(hrnet_sweep.__file__).resolve().parents[1]
    assert child_env({"OMP_NUM_THREADS": "4"}, threads=1)["OMP_NUM_THREADS"] == "4"  # the user's setting wins
    assert "CUDA_VISIBLE_DEVICES" not in child_env({})


@pytest.mark.unit
def test_a_child_has_its_own_group_and_the_group_is_killed(tmp_path):
    with open(tmp_path / "log", "ab") as log:
        proc = start([sys.executable, "-c", "import time; time.sleep(60)"], env=child_env(), log=log)
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        kill_group(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM
        kill_group(proc.pid, signal.SIGKILL)  # a group that is gone is not an error
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.unit
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_child_dies_with_its_parent(tmp_path):
    # the parent starts a child with `start`, prints its pid, then is SIGKILLed
    code = (
        "import sys; from hrnet_sweep.children import child_env, start; "
        "p = start([sys.executable, '-c', 'import time; time.sleep(60)'], env=child_env(), "
        "log=open(sys.argv[1], 'ab')); print(p.pid, flush=True); import time; time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "log")], stdout=subprocess.PIPE, env=child_env(), text=True
    )
    child = int(parent.stdout.readline())
    assert pid_alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child)
