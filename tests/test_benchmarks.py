"""The GPU check's script end to end at tiny sizes on CPU, so that a lent GPU is never spent on a script that crashes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["step_time", "step_time_compiled", "profile_step", "length_scaling_lm2", "length_scaling", "generation",
         "generation_no_cudnn"]


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_cpu(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(ROOT / "benchmarks/gpu_check.sh"), str(tmp_path), "--cpu-smoke"], env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    for step in STEPS:
        assert f"gpu_check: {step} done" in out.stdout
        assert json.loads((tmp_path / f"{step}.json").read_text())  # each step wrote its figures


def test_gpu_check_refuses_an_unknown_option(tmp_path):
    out = subprocess.run([str(ROOT / "benchmarks/gpu_check.sh"), str(tmp_path), "--fast"], capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout.strip() == "gpu_check: unknown option '--fast' (only --cpu-smoke)"
