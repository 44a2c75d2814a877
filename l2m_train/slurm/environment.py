"""The cluster environment a run's ranks train in, for the Trainer's `plugins`."""
from __future__ import annotations

import warnings

from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment

# Lightning warns whenever sbatch's tools are installed but a run is not under srun: a login node, a laptop with
# SLURM installed. `l2m submit` starts every rank with srun itself; outside a job, one process is what was asked for.
warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")


def cluster_plugins() -> list[ClusterEnvironment]:
    """Under srun, Lightning's SLURM environment without its auto-requeue: the job script requeues the job itself
    after every rank has checkpointed (slurm/job.sbatch), and a second requeue from Lightning's own SIGUSR1 handler
    would race it. Elsewhere nothing, so that Lightning detects the environment as usual (torchrun first, as it does)."""
    if SLURMEnvironment.detect() and not TorchElasticEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []
