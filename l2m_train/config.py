"""Typed configuration: dataclass schemas, YAML composition, `key=value` overrides, and validation.

An experiment YAML may start with `defaults: [model/tiny]`: each entry names conf/<group>/<name>.yaml, merged under
the key <group> before the YAML's own keys. An override `model=small` replaces the group's entry (load_config).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from importlib.resources import files
from pathlib import Path, PurePath
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(str(files("l2m_train.conf")))  # the top-level conf/ folder, installed as a package
QUICKSTART = CONF_DIR / "experiment" / "quickstart.yaml"
SOURCES = {"recall", "pretrain", "qa"}
OWNED_DEEPSPEED_KEYS = {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping", "bf16", "fp16"}


class ConfigError(ValueError):
    """A configuration problem, described in one line for the user."""


@dataclass
class MemoryConfig:
    kind: str = "lm2"  # lm2 | rmt | none
    slots: int = 16  # N memory slots (lm2) or K memory tokens (rmt)
    layers: Optional[list[int]] = None  # lm2: blocks with a memory layer; None = all blocks
    init: str = "learned"  # learned | identity (one-hot rows, as in LM2)
    bptt_segments: int = -1  # memory writes the gradient may cross, counted back from the last segment; -1 = all
    forget_bias: float = 1.0  # initial b_f: the memory remembers by default
    write_norm: bool = True  # RMSNorm the block outputs before the write attends to them (false: raw, docs/design-notes.md §1)
    convex_write: bool = False  # lm2: g_in = 1 − g_f, so M stays within [−1, 1] however many segments it has written
    slot_competition: bool = False  # lm2: tokens compete for slots in the write, which changes the slots they claim


@dataclass
class ModelConfig:
    vocab_size: int = 256
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 4
    d_ff: int = 176
    segment_len: int = 16  # L: self-attention is causal inside a segment only
    attention: str = "segment"  # segment | full (full causal attention over the whole sample; memory.kind none)
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    activation_checkpointing: bool = False  # recompute each segment in the backward pass
    memory: MemoryConfig = field(default_factory=MemoryConfig)


@dataclass
class RecallConfig:
    """The synthetic recall task: key/value pairs in the first segment, the question in the last."""

    pairs: int = 2  # key/value pairs to remember
    train_samples: int = 0  # 0: a fresh sample at every position (unlimited, seeded)


@dataclass
class PretrainConfig:
    shards: Optional[str] = None  # a directory written by `l2m data pack`
    val_fraction: float = 0.01  # the tail of the token stream held out for validation, never trained on


@dataclass
class QAConfig:
    path: Optional[str] = None  # a directory written by `l2m data babilong` (train and validation splits)


@dataclass
class Stage:
    """A curriculum stage: from `start_tokens` tokens seen on, samples have up to `segments` segments."""

    start_tokens: int = 0
    segments: int = 2


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["recall"])  # recall | pretrain | qa, mixed by `weights`
    weights: list[float] = field(default_factory=list)  # one per source; empty: equal weights
    segments: int = 3  # segments per sample (at the last curriculum stage)
    curriculum: list[Stage] = field(default_factory=list)  # empty: one stage of `segments` segments from the start
    bucket: bool = True  # sort each step's samples by length, pad micro-batches only to whole segments (data/bucketing.py)
    val_samples: int = 512  # per source
    seed: int = 1234  # the data order and the synthetic samples are pure functions of it
    recall: RecallConfig = field(default_factory=RecallConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    qa: QAConfig = field(default_factory=QAConfig)

    @property
    def stages(self) -> list[Stage]:
        return self.curriculum or [Stage(0, self.segments)]


@dataclass
class ReconstructionConfig:
    """Each segment's memory read is pulled towards what attention over the raw previous segment returns."""

    weight: float = 0.0  # λ_rec; 0 = not computed at all
    layers: Optional[list[int]] = None  # blocks whose read is supervised; None = every memory layer (rmt: every block)


@dataclass
class RetrievalConfig:
    """InfoNCE between the memory read-out at the question and the facts placed before it (supporting = positive)."""

    weight: float = 0.0  # λ_ret; 0 = not computed at all
    dim: int = 64  # output size of the two projection heads
    temperature: float = 0.1


@dataclass
class ContextConfig:
    """Next-token loss on a sample's context, the tokens before its supervised ones (see `Sample`)."""

    weight: float = 0.0  # λ_ctx; 0 = not computed at all


@dataclass
class LossConfig:
    context: ContextConfig = field(default_factory=ContextConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)


@dataclass
class OptimConfig:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr · min_lr_ratio
    weight_decay: float = 0.1  # on matrices only
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_tokens: int = 20_000
    grad_clip: float = 1.0
    # The memory kind's own parameters learn at lr · memory_lr_scale on the same schedule: for a memory added to a
    # pretrained backbone (train.init_from), whose fresh weights may want other steps than the backbone's.
    memory_lr_scale: float = 1.0


@dataclass
class DeepSpeedConfig:
    """ZeRO through Lightning's DeepSpeed strategy (train.strategy=deepspeed): the DeepSpeed JSON is generated from this."""

    stage: int = 2  # 1: optimizer states sharded across ranks; 2: and gradients; 3: and parameters
    offload_optimizer: bool = False  # optimizer states and the optimizer step on the CPU
    offload_params: bool = False  # parameters on the CPU between uses (stage 3)
    extra: dict[str, Any] = field(default_factory=dict)  # DeepSpeed JSON keys merged over the generated ones


@dataclass
class TrainConfig:
    max_tokens: int = 1_000_000  # the token budget; the learning-rate schedule runs over it
    micro_batch: int = 32  # samples per device per micro-step
    accumulate: int = 1  # micro-steps per optimizer step
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # per node
    nodes: int = 1  # multi-node: Lightning finds ranks and addresses in the cluster environment (SLURM, torchrun, ...)
    strategy: str = "auto"  # auto (single on one device, else ddp) | single | ddp | deepspeed
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    val_every_steps: int = 100
    log_every_steps: int = 10
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    compare_baseline: bool = False  # also train segment-local `none` on the same budget and compare
    init_from: str = ""  # a run, checkpoint or export directory: a fresh run starts from its weights (train/init_from.py)
    peak_tflops: float = 0.0  # per device, for MFU; 0 = the known GPUs' dense peaks (train/peak_flops.py); CPUs: no MFU
    max_nonfinite_steps: int = 10  # training stops after this many optimizer steps in a row with a nan or inf loss
    compile: bool = False  # torch.compile each segment's step (static shapes, one graph per segment): train/compile.py
    # Training ends at the first validation where a validation metric passes this, e.g. val/exact>0.83 or val/loss<1.2
    # (train/stop_at.py); "" = at max_tokens only.
    stop_at: str = ""


@dataclass
class CheckpointConfig:
    every_steps: int = 100  # also at the end of training and at the step boundary after a preemption signal
    keep_last: int = 2  # the newest complete checkpoints kept
    keep_every_steps: int = 0  # milestones: checkpoints at multiples of this step are never deleted; 0 = none


@dataclass
class RunConfig:
    name: str = "quickstart"
    root: str = "runs"  # the run directory is <root>/<name>


@dataclass
class WandbConfig:
    """W&B run tracking. One W&B run per run directory: a resumed or requeued run continues it."""

    mode: str = "auto"  # auto: $WANDB_MODE if set, else online with an API key, else offline | online | offline | disabled
    project: str = "l2m_train"
    entity: str = ""  # "" = your default entity
    tags: list[str] = field(default_factory=list)
    init_timeout: int = 30  # seconds to reach the server before falling back to offline


@dataclass
class SlurmConfig:
    """`l2m submit`: the sbatch job. Nodes and tasks per node (one per device) come from train.nodes and train.devices."""

    time: str = "4:00:00"  # --time; a job stopped by it checkpoints, requeues itself and resumes
    signal_seconds: int = 300  # SIGUSR1 reaches every rank this long before the time limit
    cpus_per_task: int = 4
    mem: str = ""  # per node, e.g. 200G; "" = the partition's default
    gpu_type: str = ""  # --gpus-per-node=<gpu_type>:<devices>, e.g. a100; "" = any
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    output: str = ""  # --output pattern, e.g. logs/%x-%j.out; "" = SLURM's default (slurm-%j.out)
    sbatch: list[str] = field(default_factory=list)  # more `#SBATCH` options, e.g. [--exclusive, --mail-type=END]
    modules: list[str] = field(default_factory=list)  # `module load` each, before srun
    env: dict[str, str] = field(default_factory=dict)  # exported before srun
    setup: list[str] = field(default_factory=list)  # shell lines run as written (your own commands: not quoted)
    container: str = ""  # srun --container-image (pyxis/enroot)
    srun: list[str] = field(default_factory=list)  # more srun options, e.g. [--container-mounts=/data:/data]


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    @property
    def sample_len(self) -> int:
        return self.data.segments * self.model.segment_len

    @property
    def samples_per_step(self) -> int:
        """Samples of the full length per optimizer step across all devices (more, shorter ones in early stages)."""
        return self.train.micro_batch * self.train.accumulate * self.world_size

    @property
    def world_size(self) -> int:
        return self.train.devices * self.train.nodes

    @property
    def tokens_per_step(self) -> int:
        """Positions per optimizer step: the steps of the budget and the schedule. Real tokens per step are at most
        this (padding excluded; close to it with data.bucket)."""
        return self.samples_per_step * self.sample_len


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends; the message names the line
        raise ConfigError(f"cannot parse {path}: {' '.join(str(err).split())}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    return loaded


def _group_file(group: str, name: str) -> Path:
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))
        raise ConfigError(f"no {group} preset named '{name}' (choices: {choices})")
    return path


def _defaults(raw: DictConfig, path: Path) -> dict[str, str]:
    """The YAML's `defaults` list, popped from it: {group: preset name}."""
    defaults = raw.pop("defaults", [])
    if not OmegaConf.is_list(defaults) and not isinstance(defaults, list):
        raise ConfigError(f"{path}: 'defaults' must be a list such as [model/tiny]")
    choices = {}
    for entry in defaults:
        group, _, name = str(entry).partition("/")
        choices[group] = name
    return choices


def _group_choice(text: str) -> tuple[str, str] | None:
    """(group, preset) for an override that names a whole group (model=small), else None."""
    key, sep, value = text.partition("=")
    return (key, value) if sep and key.isidentifier() and (CONF_DIR / key).is_dir() else None


def _parse_override(text: str) -> DictConfig:
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"malformed override '{text}': expected key=value, e.g. model.d_model=128")
    try:
        return OmegaConf.from_dotlist([text])
    except OmegaConfBaseException as err:
        raise ConfigError(f"malformed override '{text}': {err}") from None


def experiment_path(name: str | Path | None) -> Path:
    """A YAML path, or the name of a built-in experiment (conf/experiment/<name>.yaml); None: the quickstart."""
    if name is None:
        return QUICKSTART
    builtin = CONF_DIR / "experiment" / f"{name}.yaml"
    return builtin if not Path(name).suffix and builtin.is_file() else Path(name)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Schema ← group presets ← the experiment YAML's own keys ← dotted overrides, validated (as in Hydra).

    A group choice among the overrides (model=small) replaces that group's entry in the YAML's `defaults` (or adds
    one), wherever it is typed: the replaced preset is never read. Dotted overrides then apply in the order typed.
    Raises ConfigError naming the problem."""
    yaml_path = experiment_path(path)
    body = _read_yaml(yaml_path)
    choices, dotted = _defaults(body, yaml_path), []
    for text in overrides:
        choice = _group_choice(text)
        if choice is None:
            dotted.append(_parse_override(text))
        elif choice[0] in body and choice[0] not in choices:  # e.g. a run's resolved config.yaml
            raise ConfigError(f"{text}: {yaml_path} sets {choice[0]} itself, with no {choice[0]} preset under `defaults` "
                              f"to replace, so its own keys would win: override {choice[0]}.* keys instead")
        else:
            choices[choice[0]] = choice[1]
    presets = [OmegaConf.create({group: _read_yaml(_group_file(group, name))}) for group, name in choices.items()]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), *presets, body, *dotted)
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None
    _keep_memory_keys_of_the_kind(cfg.model.memory, [*presets, body, *dotted])
    validate(cfg)
    return cfg


def _keep_memory_keys_of_the_kind(memory: MemoryConfig, sources: list[DictConfig]) -> None:
    """A model.memory key that the chosen kind does not use is refused where it is set, to other than its default, by
    the source that chooses the kind (a preset, the YAML, an override) or a later one. Set earlier, by a preset or an
    override meant for another kind (`model=base-125m model.memory.kind=rmt`), it is reset to its default, so that
    the resolved config (config.yaml, a job's YAML) holds only what the model uses and loads again."""
    kind, defaults = memory_kind(memory.kind), MemoryConfig()
    unused = [f.name for f in fields(MemoryConfig) if f.name != "kind" and f.name not in kind.KEYS]
    chosen = max((i for i, s in enumerate(sources) if OmegaConf.select(s, "model.memory.kind") is not None), default=0)
    for source in sources[chosen:]:
        keys = OmegaConf.select(source, "model.memory")
        keys = OmegaConf.to_container(keys) if isinstance(keys, DictConfig) else {}
        for key in unused:
            if key in keys and keys[key] != getattr(defaults, key):
                raise ConfigError(f"model.memory.{key}={keys[key]} does not apply to model.memory.kind={memory.kind}, "
                                  f"which uses {', '.join(sorted(kind.KEYS)) or 'no other memory key'}")
    for key in unused:
        setattr(memory, key, getattr(defaults, key))


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    if type(err).__name__ == "ConfigKeyError" and key:
        return f"unknown config key '{key}'"
    return f"invalid value for '{key}': {msg}" if key else msg


def _nonfinite(value: Any, key: str) -> list[tuple[str, float]]:
    """(key, value) of every nan or ±inf number in a config (dataclasses, lists, dicts)."""
    if is_dataclass(value):
        items = [(f.name, getattr(value, f.name)) for f in fields(value)]
    elif isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        return [found for i, v in enumerate(value) for found in _nonfinite(v, f"{key}[{i}]")]
    else:
        return [(key, value)] if isinstance(value, float) and not math.isfinite(value) else []
    return [found for name, v in items for found in _nonfinite(v, f"{key}.{name}" if key else str(name))]


def validate(cfg: Config) -> None:
    for key, value in _nonfinite(cfg, "")[:1]:  # nan fails every comparison below, but inf passes most
        raise ConfigError(f"{key} must be a finite number, got {value}")
    m, mem, t, o, d = cfg.model, cfg.model.memory, cfg.train, cfg.optim, cfg.data
    kind = memory_kind(mem.kind)
    checks = [
        (m.segment_len > 0, f"model.segment_len must be > 0, got {m.segment_len}"),
        (min(m.d_model, m.n_layers, m.vocab_size, m.d_ff) > 0, "model.d_model, n_layers, vocab_size and d_ff must be > 0"),
        (m.n_heads > 0 and m.d_model % m.n_heads == 0, f"model.n_heads={m.n_heads} must divide model.d_model={m.d_model}"),
        ((m.d_model // max(m.n_heads, 1)) % 2 == 0, "model.d_model / model.n_heads must be even for rotary embeddings"),
        (m.n_kv_heads > 0 and m.n_heads % m.n_kv_heads == 0, f"model.n_kv_heads={m.n_kv_heads} must divide model.n_heads={m.n_heads}"),
        (m.attention in ("segment", "full"), f"model.attention must be 'segment' or 'full', got '{m.attention}'"),
        (m.attention == "segment" or mem.kind == "none", "model.attention=full is the no-memory baseline: set model.memory.kind=none"),
        (d.segments > 0, f"data.segments must be > 0, got {d.segments}"),
        (d.recall.pairs > 0 and d.recall.train_samples >= 0, "data.recall.pairs must be > 0 and data.recall.train_samples >= 0"),
        (d.val_samples > 0, "data.val_samples must be > 0"),
        (0 <= d.pretrain.val_fraction < 1, f"data.pretrain.val_fraction must be in [0, 1), got {d.pretrain.val_fraction}"),
        (bool(d.sources) and set(d.sources) <= SOURCES and len(set(d.sources)) == len(d.sources),
         f"data.sources must be distinct names among {sorted(SOURCES)}, got {d.sources}"),
        (not d.weights or (len(d.weights) == len(d.sources) and min(d.weights) >= 0 and sum(d.weights) > 0),
         f"data.weights {d.weights} must be one non-negative weight per source in data.sources {d.sources}"),
        (min(t.micro_batch, t.accumulate, t.devices, t.nodes) > 0, "train.micro_batch, train.accumulate, train.nodes and "
                                                                   "train.devices must be > 0"),
        (min(t.val_every_steps, t.log_every_steps) > 0, "train.val_every_steps and train.log_every_steps must be > 0"),
        (t.max_tokens > 0 and t.threads >= 0, "train.max_tokens must be > 0 and train.threads >= 0"),
        (not (t.init_from and t.compare_baseline and mem.kind != "none"),
         "train.compare_baseline trains a model without memory, which cannot start from train.init_from's weights: "
         "set train.compare_baseline=false"),
        (t.accelerator in ("auto", "cpu", "gpu", "cuda"), f"train.accelerator must be auto, cpu or gpu, got '{t.accelerator}'"),
        (t.precision in ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"), f"unsupported train.precision '{t.precision}'"),
        (o.lr > 0 and o.warmup_tokens >= 0 and o.weight_decay >= 0, "optim.lr must be > 0, warmup_tokens and weight_decay >= 0"),
        (0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}"),
        (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}"),
        (o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0: no clipping), got {o.grad_clip}"),
        (o.memory_lr_scale > 0, f"optim.memory_lr_scale must be > 0, got {o.memory_lr_scale}"),
        (m.rope_base > 0 and m.norm_eps > 0, "model.rope_base and model.norm_eps must be > 0"),
        (t.max_nonfinite_steps > 0, f"train.max_nonfinite_steps must be > 0, got {t.max_nonfinite_steps}"),
        (_stays_inside(cfg.run.name), f"run.name must be a path inside run.root (not empty, not absolute, no '..'), "
                                      f"got '{cfg.run.name}'"),
        (cfg.wandb.mode in ("auto", "online", "offline", "disabled"),
         f"wandb.mode must be auto, online, offline or disabled, got '{cfg.wandb.mode}'"),
    ]
    stop_rule(cfg)
    checks += kind.config_checks(m) + _curriculum_checks(cfg) + _loss_checks(cfg) + _strategy_checks(cfg) + _slurm_checks(cfg)
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _stays_inside(name: str) -> bool:
    """Whether <root>/<name> is a directory below root (a nested name such as sweep/lr-3e-3 is fine)."""
    parts = PurePath(name).parts
    return bool(parts) and not PurePath(name).is_absolute() and ".." not in parts


def _curriculum_checks(cfg: Config) -> list[tuple[bool, str]]:
    """Stages start at 0, in order, never beyond data.segments; each keeps the tokens per micro-batch whole."""
    stages, d, t = cfg.data.stages, cfg.data, cfg.train
    starts = [s.start_tokens for s in stages]
    checks = [(starts[0] == 0, "data.curriculum must start with a stage at start_tokens: 0"),
              (starts == sorted(set(starts)), f"data.curriculum start_tokens must increase, got {starts}")]
    for i, s in enumerate(stages):
        checks += [
            (0 < s.segments <= d.segments, f"data.curriculum[{i}].segments must be in 1..data.segments={d.segments}"),
            (s.segments > 0 and t.micro_batch * d.segments % s.segments == 0,
             f"data.curriculum[{i}].segments={s.segments} must divide train.micro_batch × data.segments = "
             f"{t.micro_batch * d.segments}, so that every micro-batch holds the same number of tokens"),
        ]
    return checks


def _strategy_checks(cfg: Config) -> list[tuple[bool, str]]:
    t, ds, c = cfg.train, cfg.train.deepspeed, cfg.checkpoint
    zero = ds.extra.get("zero_optimization")
    return [
        (t.strategy in ("auto", "single", "ddp", "deepspeed"),
         f"train.strategy must be auto, single, ddp or deepspeed, got '{t.strategy}'"),
        (t.strategy != "single" or cfg.world_size == 1, f"train.strategy=single runs one process, but train.devices × train.nodes = "
                                                        f"{cfg.world_size}: use ddp or deepspeed"),
        (ds.stage in (1, 2, 3), f"train.deepspeed.stage must be 1, 2 or 3, got {ds.stage}"),
        (not ds.offload_params or ds.stage == 3, "train.deepspeed.offload_params needs train.deepspeed.stage=3"),
        (not OWNED_DEEPSPEED_KEYS & set(ds.extra) and not (isinstance(zero, dict) and "stage" in zero),
         f"train.deepspeed.extra must not set what our config sets (the ZeRO stage, {', '.join(sorted(OWNED_DEEPSPEED_KEYS))}): "
         "use train.deepspeed.stage, train.micro_batch, train.accumulate, optim.grad_clip and train.precision"),
        (t.peak_tflops >= 0, f"train.peak_tflops must be >= 0, got {t.peak_tflops}"),
        (c.every_steps > 0 and c.keep_last > 0 and c.keep_every_steps >= 0,
         "checkpoint.every_steps and checkpoint.keep_last must be > 0, checkpoint.keep_every_steps >= 0"),
    ]


def _slurm_checks(cfg: Config) -> list[tuple[bool, str]]:
    """Numbers only: what a job script can express is checked by `l2m submit` (l2m_train/slurm/resources.py)."""
    s = cfg.slurm
    return [(s.cpus_per_task > 0, f"slurm.cpus_per_task must be > 0, got {s.cpus_per_task}"),
            (s.signal_seconds > 0, f"slurm.signal_seconds must be > 0, got {s.signal_seconds}")]


def memory_kind(name: str):
    """The memory kind's class (l2m_train/model/kinds.py), which knows its keys and checks their values."""
    from l2m_train.model.kinds import MEMORY_KINDS  # the model package imports this module: import it when used

    if name not in MEMORY_KINDS:
        raise ConfigError(f"model.memory.kind must be one of {', '.join(MEMORY_KINDS)}, got '{name}'")
    return MEMORY_KINDS[name]


def _loss_checks(cfg: Config) -> list[tuple[bool, str]]:
    rec, ret, kind = cfg.loss.reconstruction, cfg.loss.retrieval, cfg.model.memory.kind
    readers = memory_kind(kind).read_layers(cfg.model)
    checks = [(min(rec.weight, ret.weight, cfg.loss.context.weight) >= 0,  # nan and inf: refused by validate first
               "loss.reconstruction.weight, loss.retrieval.weight and loss.context.weight must be >= 0"),
              (ret.dim > 0 and ret.temperature > 0, "loss.retrieval.dim and loss.retrieval.temperature must be > 0")]
    for name, weight in (("reconstruction", rec.weight), ("retrieval", ret.weight)):
        checks.append((weight == 0 or kind != "none", f"loss.{name}.weight={weight} supervises the memory, but "
                                                      "model.memory.kind is none: use lm2 or rmt, or set the weight to 0"))
    checks.append((kind == "none" or set(rec.layers or []) <= set(readers),
                   f"loss.reconstruction.layers {rec.layers} must be blocks that read memory: {readers}"))
    return checks


VAL_METRICS = ("loss", "acc", "exact")  # what every validation logs under val_prefix (train/module.py), besides the losses it adds


def val_prefix(sources: list[str], index: int) -> str:
    """What validation logs its metrics under: val/… for a single source; val/<source>/… for each source of a mixture."""
    return "val" if len(sources) == 1 else f"val/{sources[index]}"


@dataclass(frozen=True)
class StopRule:
    """train.stop_at, parsed."""

    metric: str
    above: bool  # stop once the metric is above the threshold (else: below it)
    threshold: float


def stop_rule(cfg: Config) -> StopRule | None:
    """train.stop_at as a rule on a metric that validation logs; None when unset. Raises ConfigError."""
    text = cfg.train.stop_at.replace(" ", "")
    if not text:
        return None
    metrics = [f"{val_prefix(cfg.data.sources, i)}/{name}" for i in range(len(cfg.data.sources)) for name in VAL_METRICS]
    match = re.fullmatch(r"([\w/]+)([<>])(.+)", text)
    try:
        threshold = float(match.group(3)) if match else math.nan
    except ValueError:
        threshold = math.nan
    if match is None or not math.isfinite(threshold) or match.group(1) not in metrics:
        raise ConfigError(f"train.stop_at='{cfg.train.stop_at}' must be a validation metric, > or <, and a number, "
                          f"e.g. 'train.stop_at=val/exact>0.83' (quoted in a shell); the metrics: {', '.join(metrics)}")
    return StopRule(match.group(1), match.group(2) == ">", threshold)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(data: dict[str, Any]) -> Config:
    """A Config from a plain dict (as stored in a checkpoint), validated."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None
