"""Each memory kind validates its own keys: a key the chosen kind does not use is refused where it is set with the
choice of the kind or after it, and reset to its default where a preset or override meant for another kind set it."""
from pathlib import Path

import pytest

from l2m_train.config import ConfigError, MemoryConfig, load_config, to_yaml
from l2m_train.model.kinds import MEMORY_KINDS

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("kind,key,value", [("rmt", "layers", "[1]"), ("rmt", "init", "identity"),
                                            ("rmt", "forget_bias", "2.0"), ("rmt", "write_norm", "false"),
                                            ("rmt", "convex_write", "true"), ("rmt", "slot_competition", "true"),
                                            ("none", "slots", "8"), ("none", "bptt_segments", "1")])
def test_a_key_the_kind_does_not_use_is_refused(kind, key, value):
    with pytest.raises(ConfigError, match=rf"^model.memory.{key}=\S+ does not apply to model.memory.kind={kind}, which uses"):
        load_config(None, [f"model.memory.kind={kind}", f"model.memory.{key}={value}"])


def test_the_yaml_that_chooses_the_kind_may_not_set_another_kinds_keys(tmp_path):
    path = tmp_path / "rmt.yaml"
    path.write_text("defaults: [model/tiny]\nmodel:\n  memory:\n    kind: rmt\n    init: identity\n")
    with pytest.raises(ConfigError, match="model.memory.init=identity does not apply to model.memory.kind=rmt"):
        load_config(path)


def test_keys_set_before_the_kind_was_chosen_are_reset_and_the_resolved_config_loads_again(tmp_path):
    cfg = load_config(None, ["model=base-125m", "model.memory.kind=rmt"])  # base-125m sets lm2's memory.layers
    assert cfg.model.memory.layers is None and cfg.model.memory.bptt_segments == 4 and cfg.model.memory.slots == 64
    resolved = tmp_path / "config.yaml"
    resolved.write_text(to_yaml(cfg))
    assert load_config(resolved) == cfg
    # an earlier override counts as meant for the kind it was typed with: the later choice wins
    assert load_config(None, ["model.memory.layers=[1]", "model.memory.kind=rmt"]).model.memory.layers is None
    # the kind's own keys, and keys set to their defaults, pass
    load_config(None, ["model.memory.kind=rmt", "model.memory.slots=3", "model.memory.init=learned"])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("kind", sorted(MEMORY_KINDS))
def test_every_experiment_loads_with_every_kind(experiment, kind):
    cfg = load_config(experiment, [f"model.memory.kind={kind}"])
    unused = set(vars(MemoryConfig())) - MEMORY_KINDS[kind].KEYS - {"kind"}
    assert all(getattr(cfg.model.memory, key) == getattr(MemoryConfig(), key) for key in unused)
