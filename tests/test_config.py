from pathlib import Path

import pytest

from l2m_train.config import QUICKSTART, ConfigError, ModelConfig, load_config, to_yaml


def test_quickstart_loads_with_its_model_preset():
    cfg = load_config()
    assert cfg.model.memory.kind == "lm2" and cfg.model.d_model == 64 and cfg.run.name == "quickstart"


def test_overrides_are_typed_and_applied():
    cfg = load_config(None, ["model.memory.slots=32", "optim.lr=1e-4", "model.memory.layers=[1]"])
    assert cfg.model.memory.slots == 32 and cfg.optim.lr == 1e-4 and cfg.model.memory.layers == [1]


def test_a_group_override_swaps_the_preset():
    assert load_config(None, ["model=small"]).model.d_model == 256


def experiment(tmp_path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def test_a_swap_replaces_the_preset_so_its_keys_do_not_leak(tmp_path):
    """base-125m sets activation_checkpointing, memory.layers and bptt_segments; small does not: after the swap they
    are the schema's defaults, and the whole model is what a YAML naming small would give."""
    swapped = load_config(experiment(tmp_path, "defaults: [model/base-125m]\n"), ["model=small"]).model
    assert swapped == load_config(experiment(tmp_path, "defaults: [model/small]\n")).model
    schema = ModelConfig()
    assert (swapped.activation_checkpointing, swapped.memory.layers, swapped.memory.bptt_segments) == (
        schema.activation_checkpointing, schema.memory.layers, schema.memory.bptt_segments)
    assert load_config(None, ["model=base-125m", "model=small"]).model == load_config(None, ["model=small"]).model  # last wins


def test_a_dotted_override_applies_after_every_group_choice_wherever_typed():
    before = load_config(None, ["model.memory.kind=none", "model=small"])
    after = load_config(None, ["model=small", "model.memory.kind=none"])
    assert before == after and before.model.memory.kind == "none" and before.model.d_model == 256


def test_the_experiments_own_keys_apply_over_the_chosen_preset(tmp_path):
    cfg = load_config(experiment(tmp_path, "defaults: [model/tiny]\nmodel: {vocab_size: 1024}\n"), ["model=small"])
    assert cfg.model.vocab_size == 1024 and cfg.model.d_model == 256


def test_a_group_choice_cannot_be_overruled_by_the_yamls_own_group(tmp_path):
    resolved = experiment(tmp_path, to_yaml(load_config()))  # a run's config.yaml: the whole model, no defaults
    with pytest.raises(ConfigError, match="sets model itself, with no model preset under `defaults`"):
        load_config(resolved, ["model=small"])
    assert load_config(experiment(tmp_path, "run: {name: x}\n"), ["model=small"]).model.d_model == 256  # no model keys: added


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.memroy.slots=3"], "unknown config key 'model.memroy'"),
        (["trian.seed=1"], "unknown config key 'trian'"),
        (["model.d_model=wide"], "model.d_model"),
        (["novalue"], "malformed override 'novalue'"),
        (["model..x=1"], "malformed override"),
        (["model=huge"], "no model preset named 'huge'"),
        (["model.segment_len=0"], "model.segment_len must be > 0"),
        (["model.memory.slots=0"], "model.memory.slots must be > 0"),
        (["model.n_heads=5"], "must divide model.d_model"),
        (["model.n_kv_heads=3"], "must divide model.n_heads"),
        (["model.memory.layers=[0,7]"], "out of range for 2 layers"),
        (["model.memory.kind=lstm"], "model.memory.kind"),
        (["model.attention=full"], "set model.memory.kind=none"),
        (["model.memory.init=identity", "model.memory.slots=100"], "slots <= model.d_model"),
        (["model.memory.layers=[]"], "for no memory use model.memory.kind=none"),
        (["model.d_ff=0"], "d_ff must be > 0"),
        (["train.val_every_steps=0"], "train.val_every_steps"),
        (["train.accelerator=tpu9"], "train.accelerator must be"),
        (["optim.min_lr_ratio=2"], "optim.min_lr_ratio"),
        (["loss.context.weight=-0.5"], "loss.context.weight must be >= 0"),
        (["loss.context.weight=inf"], "loss.context.weight must be a finite number"),
        (["loss.context.weight=nan"], "loss.context.weight must be a finite number"),
        (["optim.lr=inf"], "optim.lr must be a finite number, got inf"),
        (["optim.lr=nan"], "optim.lr must be a finite number, got nan"),
        (["optim.grad_clip=-inf"], "optim.grad_clip must be a finite number"),
        (["optim.weight_decay=inf"], "optim.weight_decay must be a finite number"),
        (["optim.betas=[0.9,inf]"], "optim.betas[1] must be a finite number"),
        (["loss.retrieval.weight=inf"], "loss.retrieval.weight must be a finite number"),
        (["data.weights=[inf]"], "data.weights[0] must be a finite number"),
        (["train.deepspeed.extra={zero_optimization: {reduce_bucket_size: .inf}}"],
         "train.deepspeed.extra.zero_optimization.reduce_bucket_size must be a finite number"),
        (["optim.betas=[0.9,1.0]"], "optim.betas must be two numbers in [0, 1"),
        (["optim.grad_clip=-1"], "optim.grad_clip must be >= 0"),
        (["model.norm_eps=0"], "model.rope_base and model.norm_eps must be > 0"),
        (["train.max_nonfinite_steps=0"], "train.max_nonfinite_steps must be > 0"),
        (["optim.memory_lr_scale=0"], "optim.memory_lr_scale must be > 0, got 0"),
    ],
)
def test_bad_configs_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(None, overrides)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {d_model: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.memory.kind=rmt"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_every_shipped_config_is_valid():
    for preset in ("tiny", "small", "base-125m", "medium-350m", "large-1b"):
        load_config(QUICKSTART, [f"model={preset}"])
