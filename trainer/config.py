"""NeoX YAML configuration: load, merge, override, check, and report what is not implemented.

gpt-neox's format: one flat mapping per file, keys spelled with `-` or `_` interchangeably (we
normalise to `_`), several files merged in order (a later file wins), DeepSpeed's own sections
(`optimizer`, `zero_optimization`, `fp16`, `bf16`) nested as DeepSpeed spells them. The files are
YAML read with PyYAML's safe loader, which also accepts the guide's JSON-like `determined-cluster.yml`
(comments, `True`, trailing commas).

`--override key=value` sets one key after the files; the value is parsed as YAML and a dotted key
reaches into a nested section (`optimizer.params.lr=1e-5`).

Each group of keys becomes a typed dataclass checked in `__post_init__`. Keys we recognise but
honour differently are listed with the reason; keys we do not implement are listed at start-up
(`NeoXConfig.report()`), never dropped silently.

Parallelism: there is no tensor or pipeline parallelism yet. `model-parallel-size` or
`pipe-parallel-size` above 1 is mapped to ZeRO stage 3 data parallelism (parameters sharded over all
ranks), and the mapping is announced. The original model-parallel size still decides vocabulary
padding, so the padded vocabulary matches checkpoints written with tensor parallelism.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jobs.cli import JobError
from trainer.model import ModelConfig


def normalise(key: str) -> str:
    return key.replace("-", "_")


class _Section:
    """Type-checks its fields (after dataclass init) so a wrong type names its key."""

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _type_ok(value, hints[f.name]):
                value = _yaml_number(value)
                setattr(self, f.name, value)
            if not _type_ok(value, hints[f.name]):
                raise JobError(
                    f"config key {f.name.replace('_', '-')!r} must be {_type_name(hints[f.name])}, "
                    f"got {value!r} ({type(value).__name__})"
                )
            if hints[f.name] is float and isinstance(value, int):
                setattr(self, f.name, float(value))


def _yaml_number(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads `1e-5` as a string; take such strings as the number they spell."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def _type_ok(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin)


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
             list: "a list", type(None): "null"}
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return " or ".join(names.get(typing.get_origin(a) or a, str(a)) for a in args)


@dataclass
class ModelArgs(_Section):
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    seq_length: int = 2048
    max_position_embeddings: int | None = None  # defaults to seq_length
    intermediate_size: int | None = None  # defaults to 4 x hidden_size
    norm: str = "layernorm"
    pos_emb: str = "rotary"
    rotary_pct: float = 1.0
    rotary_emb_base: float = 10000.0
    no_weight_tying: bool = False
    gpt_j_residual: bool = False
    activation: str = "gelu"
    bias_gelu_fusion: bool = False  # gpt-neox's fused bias-GELU is the tanh approximation
    layernorm_epsilon: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    checkpoint_activations: bool = False
    checkpoint_num_layers: int = 1
    make_vocab_size_divisible_by: int = 128
    padded_vocab_size: int | None = None
    vocab_file: str | None = None
    init_method: str = "small_init"
    output_layer_init_method: str = "wang_init"

    def __post_init__(self) -> None:
        self._check_types()
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length
        if self.norm != "layernorm":
            raise JobError(f"config key 'norm': {self.norm!r} is not implemented (only layernorm)")
        if self.pos_emb != "rotary":
            raise JobError(f"config key 'pos-emb': {self.pos_emb!r} is not implemented (only rotary)")
        if self.activation != "gelu":
            raise JobError(f"config key 'activation': {self.activation!r} is not implemented (only gelu)")
        if self.seq_length > self.max_position_embeddings:
            raise JobError(
                f"config key 'seq-length' {self.seq_length} exceeds 'max-position-embeddings' "
                f"{self.max_position_embeddings}"
            )
        if self.checkpoint_num_layers != 1:
            raise JobError("config key 'checkpoint-num-layers': only 1 (every layer) is implemented")


@dataclass
class ParallelArgs(_Section):
    pipe_parallel_size: int = 1
    model_parallel_size: int = 1

    def __post_init__(self) -> None:
        self._check_types()

    @property
    def mapped_to_zero3(self) -> bool:
        return self.pipe_parallel_size > 1 or self.model_parallel_size > 1


@dataclass
class OptimizerArgs(_Section):
    optimizer: dict = field(default_factory=lambda: {"type": "Adam", "params": {"lr": 1e-4}})
    weight_decay: float = 0.01
    gradient_clipping: float = 1.0

    def __post_init__(self) -> None:
        self._check_types()
        kind = str(self.optimizer.get("type", "")).lower()
        if kind not in ("adam", "adamw"):
            raise JobError(f"config key 'optimizer.type': {self.optimizer.get('type')!r} is not implemented (Adam, AdamW)")
        params = self.optimizer.setdefault("params", {})
        params.update({k: _yaml_number(v) for k, v in params.items()})
        if not _type_ok(params.get("lr"), float):
            raise JobError(f"config key 'optimizer.params.lr' must be a number, got {params.get('lr')!r}")

    @property
    def lr(self) -> float:
        return float(self.optimizer["params"]["lr"])


@dataclass
class ScheduleArgs(_Section):
    lr_decay_style: str = "linear"
    lr_decay_iters: int | None = None  # defaults to train_iters
    min_lr: float = 0.0
    warmup: float = 0.01  # a fraction of lr_decay_iters

    def __post_init__(self) -> None:
        self._check_types()
        if self.lr_decay_style not in ("cosine", "linear", "constant"):
            raise JobError(f"config key 'lr-decay-style': {self.lr_decay_style!r} is not one of cosine, linear, constant")
        if not 0.0 <= self.warmup <= 1.0:
            raise JobError(f"config key 'warmup' {self.warmup} must be a fraction in [0, 1]")


@dataclass
class PrecisionArgs(_Section):
    fp16: dict | None = None
    bf16: dict | None = None
    precision: str | None = None  # gpt-neox's shorthand: fp16, bfloat16, fp32

    def __post_init__(self) -> None:
        self._check_types()
        if self.precision not in (None, "fp16", "bfloat16", "fp32"):
            raise JobError(f"config key 'precision': {self.precision!r} is not one of fp16, bfloat16, fp32")
        if self.fp16_enabled and self.bf16_enabled:
            raise JobError("config keys 'fp16' and 'bf16' are both enabled; choose one")

    @property
    def fp16_enabled(self) -> bool:
        return bool(self.fp16 and self.fp16.get("enabled", True)) or self.precision == "fp16"

    @property
    def bf16_enabled(self) -> bool:
        return bool(self.bf16 and self.bf16.get("enabled", True)) or self.precision == "bfloat16"

    @property
    def name(self) -> str:
        return "fp16" if self.fp16_enabled else "bf16" if self.bf16_enabled else "fp32"


@dataclass
class BatchArgs(_Section):
    train_micro_batch_size_per_gpu: int = 4
    gradient_accumulation_steps: int = 1
    train_batch_size: int | None = None  # checked against the world size at start-up

    def __post_init__(self) -> None:
        self._check_types()
        if self.train_micro_batch_size_per_gpu < 1 or self.gradient_accumulation_steps < 1:
            raise JobError("config keys 'train-micro-batch-size-per-gpu' and 'gradient-accumulation-steps' must be >= 1")


@dataclass
class DataArgs(_Section):
    data_path: str | None = None  # the PREFIX_text_document prefix (without .bin/.idx)
    split: str = "969,30,1"
    seed: int = 1234
    data_impl: str = "mmap"

    def __post_init__(self) -> None:
        self._check_types()
        if self.data_impl != "mmap":
            raise JobError(f"config key 'data-impl': {self.data_impl!r} is not implemented (only mmap)")
        self.split_weights()

    def split_weights(self) -> list[float]:
        try:
            parts = [float(p) for p in str(self.split).replace("/", ",").split(",")]
        except ValueError:
            raise JobError(f"config key 'split': {self.split!r} is not a list of numbers such as 995,4,1") from None
        parts = (parts + [0.0, 0.0])[:3]
        if any(p < 0 for p in parts) or sum(parts) <= 0:
            raise JobError(f"config key 'split': {self.split!r} needs non-negative weights with a positive sum")
        return [p / sum(parts) for p in parts]


@dataclass
class TrainArgs(_Section):
    train_iters: int = 1000
    save: str | None = None
    load: str | None = None
    save_interval: int | None = None
    keep_last_n_checkpoints: int | None = None  # older global_step folders are deleted after each save
    eval_interval: int = 1000
    eval_iters: int = 100
    log_interval: int = 100
    exit_interval: int | None = None  # stop (after saving) once this many iterations ran in this process
    tensorboard_dir: str | None = None
    log_dir: str | None = None
    finetune: bool = False  # load weights only, even from a checkpoint that has optimizer state
    peak_tflops: float = 989.0  # per-device peak for MFU (H100/H200 dense bf16); ours, not gpt-neox's
    steps_per_print: int = 10
    wall_clock_breakdown: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        if self.train_iters < 1:
            raise JobError(f"config key 'train-iters' must be >= 1, got {self.train_iters}")
        if self.keep_last_n_checkpoints is not None and self.keep_last_n_checkpoints < 1:
            raise JobError(f"config key 'keep-last-n-checkpoints' must be >= 1, got {self.keep_last_n_checkpoints}")


# Keys understood but honoured differently from gpt-neox; listed at start-up with the reason.
HANDLED_DIFFERENTLY = {
    "scaled_upper_triang_masked_softmax_fusion": "attention uses torch's fused scaled_dot_product_attention",
    "partition_activations": "no tensor parallelism, nothing to partition",
    "synchronize_each_layer": "no tensor parallelism, nothing to synchronise",
    "output_layer_parallelism": "no tensor parallelism",
    "distributed_backend": "nccl on GPU, gloo on CPU, chosen from the device",
    "tokenizer_type": "training reads token ids; the tokenizer is used only by preprocessing",
}

SECTIONS = {
    "model": ModelArgs,
    "parallel": ParallelArgs,
    "optimizer": OptimizerArgs,
    "schedule": ScheduleArgs,
    "precision": PrecisionArgs,
    "batch": BatchArgs,
    "data": DataArgs,
    "train": TrainArgs,
}
_EXTRA_KEYS = ("zero_optimization",)


@dataclass
class NeoXConfig:
    model: ModelArgs
    parallel: ParallelArgs
    optimizer: OptimizerArgs
    schedule: ScheduleArgs
    precision: PrecisionArgs
    batch: BatchArgs
    data: DataArgs
    train: TrainArgs
    zero_optimization: dict
    unimplemented: dict[str, Any]
    handled_differently: dict[str, str]
    notes: list[str]
    files: list[str]

    def __post_init__(self) -> None:
        stage = self.zero_optimization.get("stage", 0)
        if not _type_ok(stage, int) or not 0 <= stage <= 3:
            raise JobError(f"config key 'zero_optimization.stage' must be 0, 1, 2 or 3, got {stage!r}")
        if self.parallel.mapped_to_zero3 and stage != 3:
            self.zero_optimization["stage"] = 3
            self.notes.append(
                f"model-parallel-size {self.parallel.model_parallel_size} and pipe-parallel-size "
                f"{self.parallel.pipe_parallel_size}: tensor/pipeline parallelism is not implemented; "
                f"using ZeRO stage 3 data parallelism instead of stage {stage}"
            )
        if self.schedule.lr_decay_iters is None:
            self.schedule.lr_decay_iters = self.train.train_iters

    @property
    def zero_stage(self) -> int:
        return int(self.zero_optimization.get("stage", 0))

    def padded_vocab(self, vocab_size: int) -> int:
        """gpt-neox pads to a multiple of make_vocab_size_divisible_by x the (original) model-parallel size."""
        multiple = self.model.make_vocab_size_divisible_by * self.parallel.model_parallel_size
        return -(-vocab_size // multiple) * multiple

    def tokenizer_vocab_size(self) -> int:
        if self.model.padded_vocab_size:
            return self.model.padded_vocab_size
        if not self.model.vocab_file:
            raise JobError("config: set 'vocab-file' (a tokenizer.json) or 'padded-vocab-size' to size the vocabulary")
        path = Path(self.model.vocab_file)
        if not path.is_file():
            raise JobError(f"config key 'vocab-file': {path} does not exist")
        from tokenizers import Tokenizer

        return self.padded_vocab(Tokenizer.from_file(str(path)).get_vocab_size())

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        m = self.model
        return ModelConfig(
            vocab_size=vocab_size or self.tokenizer_vocab_size(),
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            num_heads=m.num_attention_heads,
            intermediate_size=m.intermediate_size or 4 * m.hidden_size,
            max_position_embeddings=m.max_position_embeddings,
            rotary_pct=m.rotary_pct,
            rotary_base=m.rotary_emb_base,
            layer_norm_eps=m.layernorm_epsilon,
            parallel_residual=m.gpt_j_residual,
            tied_embeddings=not m.no_weight_tying,
            activation="gelu_tanh" if m.bias_gelu_fusion else "gelu",
            hidden_dropout=m.hidden_dropout,
            attention_dropout=m.attention_dropout,
            checkpoint_activations=m.checkpoint_activations,
        )

    def to_dict(self) -> dict:
        """The resolved configuration, saved with every checkpoint."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out.update(zero_optimization=self.zero_optimization, unimplemented=self.unimplemented,
                   notes=self.notes, files=self.files, precision_name=self.precision.name)
        return out

    def report(self) -> list[str]:
        """Start-up lines: mappings, keys honoured differently, keys not implemented."""
        lines = [f"note: {n}" for n in self.notes]
        lines += [f"handled differently: {k} ({why})" for k, why in sorted(self.handled_differently.items())]
        if self.unimplemented:
            lines.append("not implemented (ignored): " + ", ".join(sorted(self.unimplemented)))
        return lines


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise JobError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise JobError(f"config file {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise JobError(f"config file {path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def set_key(raw: dict, key: str, value: Any, what: str = "--override") -> None:
    """Set `key` (dotted keys reach into nested sections) in the raw mapping."""
    *parents, last = [normalise(key.split(".")[0]), *key.split(".")[1:]]
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise JobError(f"{what} {key!r}: {p} is not a mapping")
    node[last] = value


def apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise JobError(f"--override {item!r}: expected key=value")
    set_key(raw, key, _yaml_number(yaml.safe_load(value)) if value else None)


def from_dict(raw: dict, files: list[str] | None = None) -> NeoXConfig:
    raw = {normalise(k): v for k, v in raw.items()}
    consumed: set[str] = set()
    sections = {}
    for name, cls in SECTIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        consumed |= kwargs.keys()
        sections[name] = cls(**kwargs)
    consumed |= set(_EXTRA_KEYS)
    handled = {k: why for k, why in HANDLED_DIFFERENTLY.items() if k in raw}
    unimplemented = {k: v for k, v in raw.items() if k not in consumed and k not in handled}
    zero = raw.get("zero_optimization") or {"stage": 0}
    if not isinstance(zero, dict):
        raise JobError(f"config key 'zero_optimization' must be a mapping, got {zero!r}")
    return NeoXConfig(**sections, zero_optimization=dict(zero), unimplemented=unimplemented,
                      handled_differently=handled, notes=[], files=list(files or []))


def load_config(files: list[str | os.PathLike], overrides: list[str] = ()) -> NeoXConfig:
    """Merge NeoX YAML files in order (a later file wins), apply overrides, build the checked config."""
    if not files:
        raise JobError("no config file given")
    raw: dict = {}
    for f in files:
        raw.update({normalise(k): v for k, v in read_yaml(f).items()})
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw, [str(f) for f in files])
