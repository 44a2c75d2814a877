"""The sbatch templates that `l2m submit` renders, installed as the package l2m_train.slurm_templates."""
