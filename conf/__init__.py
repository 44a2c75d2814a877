"""YAML configs, shipped inside the package as `l2m_train.conf` (see pyproject.toml)."""
