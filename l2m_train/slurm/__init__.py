"""SLURM: the sbatch script for a run (`l2m submit`) and the cluster environment its ranks train in."""
