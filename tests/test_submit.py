"""`l2m submit`: the rendered sbatch script line by line, its quoting through a real bash, refusals before submission,
and (slow) jobs on a private SLURM cluster (tests/slurm_cluster.py). A whole submitted run, preempted and not, is
tests/test_requeue.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from l2m_train.cli.main import main
from l2m_train.config import load_config, to_yaml
from l2m_train.slurm.environment import cluster_plugins
from l2m_train.slurm.script import render

pytest_plugins = ["slurm_cluster"]  # the `slurm_cluster` fixture (tests/slurm_cluster.py)

L2M_BIN = str(Path(sys.executable).parent)  # where the `l2m` console script lives
BIG = ["train.nodes=4", "train.devices=8", "train.accelerator=gpu", "slurm.gpu_type=h100", "slurm.cpus_per_task=12",
       "slurm.mem=800G", "slurm.time=2-00:00:00", "slurm.signal_seconds=600", "slurm.partition=gpu", "slurm.account=lm",
       "slurm.qos=high", "slurm.constraint=ib&nvlink", "slurm.output=logs/%x-%j.out", "slurm.sbatch=[--exclusive,--mail-type=END]",
       "slurm.modules=[cuda/12.4,nccl]", "slurm.env={NCCL_DEBUG: WARN, HF_HOME: /scratch/hf cache}",
       "slurm.setup=[source .venv/bin/activate]", "slurm.container=nvcr.io#nvidia/pytorch:24.05-py3",
       "slurm.srun=[--container-mounts=/scratch:/scratch]", "run.name=big"]


def script(*overrides: str) -> str:
    return render(load_config(None, list(overrides)))


def test_4_nodes_of_8_gpus_line_by_line():
    lines = script(*BIG).splitlines()
    assert lines[0] == "#!/bin/bash"
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=big",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",  # one task per GPU: Lightning's convention, tasks per node = devices
        "#SBATCH --cpus-per-task=12",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --signal=USR1@600",
        "#SBATCH --gpus-per-node=h100:8",
        "#SBATCH --mem=800G",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lm",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=ib&nvlink",
        "#SBATCH --output=logs/%x-%j.out",
        "#SBATCH --exclusive",
        "#SBATCH --mail-type=END",
    ]
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert not any(line.startswith("#SBATCH") for line in lines[first_command:])  # sbatch stops reading at the first command
    srun = ("srun --kill-on-bad-exit=1 '--container-image=nvcr.io#nvidia/pytorch:24.05-py3' --container-mounts=/scratch:/scratch "
            'l2m train --config "$config" || status=$?')
    for line in ["module load cuda/12.4", "module load nccl", "export NCCL_DEBUG=WARN", "export HF_HOME='/scratch/hf cache'",
                 "source .venv/bin/activate", "config=runs/big.job.yaml", srun, '  scontrol requeue "$SLURM_JOB_ID"']:
        assert line in lines
    assert lines.index("set -euo pipefail") < lines.index("module load cuda/12.4") < lines.index(srun)


def test_cpu_nodes_run_one_task_per_device_and_ask_for_no_gpus():
    text = script("train.accelerator=cpu", "train.devices=2", "train.nodes=3", "slurm.cpus_per_task=1", "train.threads=1")
    assert "#SBATCH --nodes=3\n#SBATCH --ntasks-per-node=2\n#SBATCH --cpus-per-task=1\n" in text
    assert "gpu" not in text.split("set -euo")[0]


def _run_with_stub_srun(text: str, tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """Run the whole script under a real bash, with srun and module replaced by stubs that record what they get."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    (home / "canary").write_text("still here")
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\0" "$@" > "$RECORD/argv"\nprintf "%s" "$HF_HOME" > "$RECORD/env"\n')
    (bin_dir / "module").write_text('#!/bin/bash\nprintf "%s\\0" "$@" >> "$RECORD/modules"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "RECORD": str(tmp_path), "SLURM_JOB_ID": "1"}
    out = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    return home, out


def test_config_values_with_shell_syntax_stay_inert(tmp_path):
    pwned = tmp_path / "pwned"
    evil = f"x; rm -rf ~ $(touch {pwned}) `touch {pwned}` && touch {pwned} | '\"\n"
    overrides = [f"slurm.env={{HF_HOME: '$(touch {pwned})'}}", f"slurm.modules=['$(touch {pwned})']", f"slurm.container=';touch {pwned}'"]
    cfg = load_config(None, overrides)
    cfg.run.name = evil  # as a YAML file may set it: a newline and both quotes too
    text = render(cfg)
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    home, out = _run_with_stub_srun(text, tmp_path)
    assert out.returncode == 0, out.stderr
    assert not pwned.exists() and (home / "canary").read_text() == "still here"
    argv = (tmp_path / "argv").read_text().split("\0")[:-1]
    config = tmp_path / "runs" / f"{evil}.job.yaml"
    assert argv == ["--kill-on-bad-exit=1", f"--container-image=;touch {pwned}", "l2m", "train", "--config",
                    str(config.relative_to(tmp_path))]
    assert (tmp_path / "env").read_text() == f"$(touch {pwned})"
    assert (tmp_path / "modules").read_text().split("\0")[:-1] == ["load", f"$(touch {pwned})"]
    assert config.read_text() == to_yaml(cfg) and load_config(config).run.name == evil  # the job trains exactly this config


def test_the_job_requeues_itself_when_training_stopped_for_the_signal(tmp_path):
    text = script().replace("srun ", "exit_138 ")  # the ranks' exit status after a preemption checkpoint: 128 + SIGUSR1
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "exit_138").write_text("#!/bin/bash\nexit 138\n")
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho "$@" > "$RECORD/scontrol"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "RECORD": str(tmp_path), "SLURM_JOB_ID": "42"}
    out = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 138 and (tmp_path / "scontrol").read_text() == "requeue 42\n"


def test_dry_run_prints_the_script_without_slurm(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    monkeypatch.chdir(tmp_path)
    assert main(["submit", "--dry-run", "train.devices=2", "--config", "quickstart", "run.name=dry"]) == 0
    assert capsys.readouterr().out == script("train.devices=2", "run.name=dry")
    assert list(tmp_path.iterdir()) == []


def test_without_slurm_submit_says_so_in_one_line(tmp_path):
    out = subprocess.run([str(Path(L2M_BIN) / "l2m"), "submit"], cwd=tmp_path, env={"PATH": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("l2m submit: error: SLURM is not available on this machine (no sbatch on PATH)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,message", [
    (["slurm.time=soon"], "slurm.time='soon' is not a SLURM time limit"),
    (["slurm.time=4", "slurm.signal_seconds=300"], "slurm.signal_seconds=300 must be shorter than slurm.time=4"),
    (["slurm.signal_seconds=0"], "slurm.signal_seconds must be > 0"),
    (["slurm.partition=gpu large"], "slurm.partition='gpu large' cannot be written as an #SBATCH option"),
    (['slurm.account="a\\nrm -rf ~"'], "slurm.account='a\\nrm -rf ~' cannot be written"),  # YAML's "\n": a line break
    (["slurm.sbatch=[--gres=gpu:2]"], "slurm.sbatch must not set --gres: it comes from train.devices"),
    (["slurm.sbatch=[--comment=two words]"], "slurm.sbatch entry '--comment=two words' cannot be written"),
    (["slurm.sbatch=[-N4]"], "slurm.sbatch entry '-N4' cannot be written"),
    (["train.accelerator=cpu", "slurm.gpu_type=a100"], "slurm.gpu_type=a100 asks for GPUs, but train.accelerator=cpu"),
    (["train.threads=2", "slurm.cpus_per_task=1"], "train.threads=2 exceeds the slurm.cpus_per_task=1"),
    (["slurm.mem=lots"], "slurm.mem='lots' must be a size"),
    (["slurm.env={1X: a}"], "slurm.env key '1X' is not an environment variable name"),
])
def test_what_the_script_cannot_express_is_refused_before_submission(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["submit", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("l2m submit: error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_ranks_under_srun_get_slurm_without_lightnings_auto_requeue(monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(key)
    assert cluster_plugins() == []
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "big")
    [environment] = cluster_plugins()
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False


FIT_UNDER_SRUN = """
import os
import lightning as L
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from l2m_train.slurm.environment import cluster_plugins
trainer = L.Trainer(accelerator="cpu", devices=2, num_nodes=int(os.environ["SLURM_NNODES"]), strategy="ddp", plugins=cluster_plugins(),
                    max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(BoringModel())
environment = trainer._accelerator_connector.cluster_environment
print("world", trainer.world_size, "rank", trainer.global_rank, "on", os.environ["SLURMD_NODENAME"], "node_rank", trainer.node_rank,
      "local_rank", trainer.local_rank, "main", os.environ["MASTER_ADDR"], "auto_requeue", environment.auto_requeue)
torch.distributed.destroy_process_group()  # as `l2m train` does: left to exit, gloo may abort the process
"""


@pytest.mark.slow
@pytest.mark.parametrize("cluster,nodes", [("slurm_cluster", 1), ("slurm_two_nodes", 2)])
def test_a_trainer_given_cluster_plugins_under_srun_leaves_requeueing_to_the_job(request, tmp_path, cluster, nodes):
    """Every rank's place comes from SLURM: on two nodes, ranks 2 and 3 run on node2 as its local ranks 0 and 1, and all
    meet at the first node's address."""
    cluster = request.getfixturevalue(cluster)
    (tmp_path / "fit.py").write_text(FIT_UNDER_SRUN)
    out = subprocess.run(["sbatch", "--parsable", f"--nodes={nodes}", "--ntasks-per-node=2", "--cpus-per-task=1", "--job-name=fit",
                          f"--chdir={tmp_path}", f"--wrap=srun {sys.executable} fit.py"], env=cluster.env, capture_output=True,
                         text=True, timeout=60)
    job_id = out.stdout.strip()
    job = cluster.wait_for_job(job_id, timeout=300)
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert job["ExitCode"] == "0:0", log[-3000:]
    for rank in range(2 * nodes):
        assert (f"world {2 * nodes} rank {rank} on node{rank // 2 + 1} node_rank {rank // 2} local_rank {rank % 2} main node1 "
                "auto_requeue False") in log, log[-3000:]
    assert "SLURM auto-requeueing enabled" not in log  # Lightning installed no SIGUSR1 requeue handler



@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["train.accelerator=cpu", "slurm.partition=nowhere"], "Invalid partition"),
    ([], "Invalid generic resource"),  # train.accelerator=auto asks for GPUs, and this cluster has none
])
def test_a_job_sbatch_refuses_is_one_line(slurm_cluster, tmp_path, args, message):
    env = {**slurm_cluster.env, "PATH": f"{L2M_BIN}:{slurm_cluster.env['PATH']}"}
    out = subprocess.run(["l2m", "submit", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("l2m submit: error: sbatch refused the job: ") and message in out.stderr, out.stderr
