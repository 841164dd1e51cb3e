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
import functools
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from jobs.cli import JobError
from trainer.neox_yaml import merge, normalise, unknown_keys_error
from trainer.neox_yaml import yaml_number as _yaml_number

if typing.TYPE_CHECKING:
    from trainer.model import ModelConfig


class _Section:
    """A group of keys: pydantic checks their types (`_parse`, every error at once), `__post_init__`
    their meaning."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@functools.cache
def _model(cls: type) -> type[pydantic.BaseModel]:
    """A strict pydantic model of the section's fields (no coercion: `"3"` is not an integer, `1` is
    not true), each optional so that only the keys given are checked and the dataclass keeps its defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: (hints[f.name], None) for f in dataclasses.fields(cls)}
    return pydantic.create_model(cls.__name__, __config__=pydantic.ConfigDict(strict=True), **fields)


def _accepts_str(hint: Any) -> bool:
    return hint is str or str in typing.get_args(hint)


def _parse(cls: type, given: dict[str, Any]) -> tuple[Any, list[str]]:
    """The section built from `given`, or None and one phrase per key of the wrong type."""
    hints = typing.get_type_hints(cls)
    given = {k: v if _accepts_str(hints[k]) else _yaml_number(v) for k, v in given.items()}
    try:
        checked = _model(cls).model_validate(given).model_dump(exclude_unset=True)
    except pydantic.ValidationError as exc:
        wrong = dict.fromkeys(str(e["loc"][0]) for e in exc.errors())  # a union reports each branch
        return None, [
            f"config key {k.replace('_', '-')!r} must be {_type_name(hints[k])}, "
            f"got {given[k]!r} ({type(given[k]).__name__})"
            for k in wrong
        ]
    return cls(**checked), []


def _type_name(hint: Any) -> str:
    names = {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        dict: "a mapping",
        list: "a list",
        type(None): "null",
    }
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
    fp8: bool = (
        False  # ours: torchao float8 training of the blocks' linear layers (GPUs of capability >= 8.9)
    )
    fused_output_loss: bool = (
        False  # ours: output layer + cross-entropy in token chunks (saves memory, not time)
    )
    compile_blocks: bool = False  # ours: torch.compile each transformer block (always on with fp8)
    make_vocab_size_divisible_by: int = 128
    padded_vocab_size: int | None = None
    vocab_file: str | None = None
    init_method: str = "small_init"
    output_layer_init_method: str = "wang_init"

    def __post_init__(self) -> None:
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

    @property
    def mapped_to_zero3(self) -> bool:
        return self.pipe_parallel_size > 1 or self.model_parallel_size > 1


@dataclass
class OptimizerArgs(_Section):
    optimizer: dict = field(default_factory=lambda: {"type": "Adam", "params": {"lr": 1e-4}})
    weight_decay: float = 0.01
    gradient_clipping: float = 1.0
    fused_optimizer_step: bool = (
        False  # ours: trainer.optim's AdamW on fp32 masters instead of DeepSpeed's ZeRO-1 step
    )

    def __post_init__(self) -> None:
        kind = str(self.optimizer.get("type", "")).lower()
        if kind not in ("adam", "adamw"):
            raise JobError(
                f"config key 'optimizer.type': {self.optimizer.get('type')!r} is not implemented (Adam, AdamW)"
            )
        params = self.optimizer.setdefault("params", {})
        params.update({k: _yaml_number(v) for k, v in params.items()})
        if not _is_number(params.get("lr")):
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
        if self.lr_decay_style not in ("cosine", "linear", "constant"):
            raise JobError(
                f"config key 'lr-decay-style': {self.lr_decay_style!r} is not one of cosine, linear, constant"
            )


@dataclass
class PrecisionArgs(_Section):
    fp16: dict | None = None
    bf16: dict | None = None
    precision: str | None = None  # gpt-neox's shorthand: fp16, bfloat16, fp32

    def __post_init__(self) -> None:
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
    def fp16_dynamic(self) -> bool:
        """fp16 with DeepSpeed's dynamic loss scaling (loss_scale 0, the default): overflow steps are its own
        to skip."""
        return self.fp16_enabled and not (self.fp16 or {}).get("loss_scale", 0)

    @property
    def name(self) -> str:
        return "fp16" if self.fp16_enabled else "bf16" if self.bf16_enabled else "fp32"


@dataclass
class BatchArgs(_Section):
    train_micro_batch_size_per_gpu: int = 4
    gradient_accumulation_steps: int = 1
    train_batch_size: int | None = None  # checked against the world size at start-up


@dataclass
class DataArgs(_Section):
    data_path: str | None = None  # the PREFIX_text_document prefix (without .bin/.idx)
    split: str = "969,30,1"
    seed: int = 1234
    data_impl: str = "mmap"

    def __post_init__(self) -> None:
        if self.data_impl != "mmap":
            raise JobError(f"config key 'data-impl': {self.data_impl!r} is not implemented (only mmap)")
        self.split_weights()

    def split_weights(self) -> list[float]:
        try:
            parts = [float(p) for p in str(self.split).replace("/", ",").split(",")]
        except ValueError:
            raise JobError(
                f"config key 'split': {self.split!r} is not a list of numbers such as 995,4,1"
            ) from None
        parts = (parts + [0.0, 0.0])[:3]
        if any(p < 0 for p in parts) or sum(parts) <= 0:
            raise JobError(
                f"config key 'split': {self.split!r} needs non-negative weights with a positive sum"
            )
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
    verify_checkpoints: bool = True  # ours: resume checks the sha256 of every file complete.json lists
    skip_non_finite_steps: int = 0  # ours: micro-batches with a NaN/Inf loss skipped before the run stops


def range_errors(sec: dict[str, Any]) -> list[str]:
    """Every value outside its range, one phrase each (all reported at once, before any heavy work)."""
    m, o, sc, b, t = sec["model"], sec["optimizer"], sec["schedule"], sec["batch"], sec["train"]
    errors = []

    def need(ok: bool, key: str, value: Any, what: str) -> None:
        if not ok:
            errors.append(f"config key {key!r} must be {what}, got {value!r}")

    at_least_1 = [
        ("num-layers", m.num_layers),
        ("hidden-size", m.hidden_size),
        ("num-attention-heads", m.num_attention_heads),
        ("seq-length", m.seq_length),
        ("max-position-embeddings", m.max_position_embeddings),
        ("intermediate-size", m.intermediate_size),
        ("padded-vocab-size", m.padded_vocab_size),
        ("make-vocab-size-divisible-by", m.make_vocab_size_divisible_by),
        ("model-parallel-size", sec["parallel"].model_parallel_size),
        ("train-micro-batch-size-per-gpu", b.train_micro_batch_size_per_gpu),
        ("gradient-accumulation-steps", b.gradient_accumulation_steps),
        ("train-batch-size", b.train_batch_size),
        ("train-iters", t.train_iters),
        ("lr-decay-iters", sc.lr_decay_iters),
        ("save-interval", t.save_interval),
        ("keep-last-n-checkpoints", t.keep_last_n_checkpoints),
        ("eval-interval", t.eval_interval),
        ("eval-iters", t.eval_iters),
        ("log-interval", t.log_interval),
        ("exit-interval", t.exit_interval),
        ("steps-per-print", t.steps_per_print),
    ]
    for key, value in at_least_1:
        need(value is None or value >= 1, key, value, ">= 1")
    need(
        sec["parallel"].pipe_parallel_size >= 0,
        "pipe-parallel-size",
        sec["parallel"].pipe_parallel_size,
        ">= 0",
    )
    if m.hidden_size >= 1 and m.num_attention_heads >= 1 and m.hidden_size % m.num_attention_heads:
        errors.append(
            f"config key 'num-attention-heads' {m.num_attention_heads} must divide 'hidden-size' "
            f"{m.hidden_size}"
        )
    for key, value in (("hidden-dropout", m.hidden_dropout), ("attention-dropout", m.attention_dropout)):
        need(0.0 <= value < 1.0, key, value, "in [0, 1)")
    need(0.0 <= m.rotary_pct <= 1.0, "rotary-pct", m.rotary_pct, "in [0, 1]")
    need(m.rotary_emb_base > 0, "rotary-emb-base", m.rotary_emb_base, "> 0")
    need(m.layernorm_epsilon > 0, "layernorm-epsilon", m.layernorm_epsilon, "> 0")
    lr = o.optimizer["params"].get("lr")
    if _is_number(lr):
        need(lr >= 0, "optimizer.params.lr", lr, ">= 0")
        if lr >= 0 and sc.min_lr >= 0 and lr < sc.min_lr:
            errors.append(f"config key 'min-lr' {sc.min_lr} must not exceed 'optimizer.params.lr' {lr}")
    need(sc.min_lr >= 0, "min-lr", sc.min_lr, ">= 0")
    need(0.0 <= sc.warmup <= 1.0, "warmup", sc.warmup, "a fraction in [0, 1]")
    betas = o.optimizer["params"].get("betas")
    if betas is not None:
        ok = isinstance(betas, list) and len(betas) == 2 and all(_is_number(x) and 0 <= x < 1 for x in betas)
        need(ok, "optimizer.params.betas", betas, "two numbers in [0, 1)")
    eps = o.optimizer["params"].get("eps")
    if eps is not None:
        need(_is_number(eps) and eps > 0, "optimizer.params.eps", eps, "a number > 0")
    need(o.weight_decay >= 0, "weight-decay", o.weight_decay, ">= 0")
    need(o.gradient_clipping >= 0, "gradient-clipping", o.gradient_clipping, ">= 0 (0: off)")
    need(sec["data"].seed >= 0, "seed", sec["data"].seed, ">= 0")
    need(t.peak_tflops > 0, "peak-tflops", t.peak_tflops, "> 0")
    need(
        t.skip_non_finite_steps >= 0,
        "skip-non-finite-steps",
        t.skip_non_finite_steps,
        ">= 0 (0: stop at the first)",
    )
    return errors


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
_EXTRA_KEYS = ("zero_optimization", "lora")  # nested sections: DeepSpeed's, ours (trainer.lora)

# Every top-level key gpt-neox's NeoXArgs accepts (megatron/neox_arguments: neox_args.py and
# deepspeed_args.py, over its releases), `_` spelling. A key that is neither ours nor in here is a
# mistake (an error naming the closest known key); one in here that we do not implement is a warning.
GPT_NEOX_KEYS = frozenset(
    """
pipe_parallel_size model_parallel_size pipe_partition_method world_size is_pipe_parallel sequence_parallel
expert_interval precision model_arch num_encoder_layers num_layers hidden_size intermediate_size
feedforward_size mlp_multiple_of expansion_factor num_attention_heads num_kv_heads seq_length
decoder_seq_length sliding_window_width max_position_embeddings norm layernorm_fusion rmsnorm_fusion
use_qk_layernorm layernorm_epsilon rms_norm_epsilon scalenorm_epsilon pos_emb rpe_num_buckets rpe_max_distance
opt_pos_emb_offset no_weight_tying attention_config sparsity_config num_unique_layers param_sharing_style
extra_sentinel_tokens make_vocab_size_divisible_by activation scaled_upper_triang_masked_softmax_fusion
scaled_masked_softmax_fusion bias_gelu_fusion bias_dropout_fusion rope_fusion fp16_lm_cross_entropy
init_method_std apply_query_key_layer_scaling use_cpu_initialization attention_softmax_in_fp32 rotary_pct
rotary_emb_base rotary_save_freqs_buffer init_method output_layer_init_method gmlp_attn_dim gpt_j_residual
gpt_j_tied use_bias_in_norms use_bias_in_attn_linear use_bias_in_mlp mlp_type soft_prompt_tuning
mamba_selective_scan_fusion mamba_causal_conv_fusion mamba_inner_func_fusion mamba_selective_fp32_params
mamba_use_bias_in_conv mamba_use_bias_in_linears output_layer_parallelism packing loss_on_targets_only
masked_lm_prob mean_noise_span_length use_flashattn_swiglu use_fused_rmsnorm dim_att head_size ffn_dim
te_columnparallel te_rowparallel te_layernorm_mlp te_mha te_fp8_format te_fp8_wgrad te_fp8_amax_history_len
te_fp8_amax_compute_algo te_fp8_margin te_fp8_mha
optimizer_type use_bnb_optimizer zero_stage zero_reduce_scatter zero_contiguous_gradients
zero_reduce_bucket_size zero_allgather_bucket_size lr
lr_decay_style lr_decay_iters lr_decay_fraction min_lr warmup override_lr_scheduler use_checkpoint_lr_scheduler
use_wandb wandb_group wandb_team wandb_project wandb_host wandb_init_all_ranks wandb_run_name git_hash log_dir
tensorboard_writer tensorboard_dir use_comet comet_workspace comet_project comet_experiment_name comet_tags
comet_others comet_experiment peak_theoretical_tflops log_interval log_grad_pct_zeros log_param_norm
log_grad_norm log_optimizer_states log_gradient_noise_scale gradient_noise_scale_n_batches
gradient_noise_scale_cpu_offload memory_profiling memory_profiling_path profile profile_step_start
profile_step_stop
distributed_backend local_rank rank lazy_mpu_init short_seq_prob eod_mask_loss adlr_autoresume
adlr_autoresume_object adlr_autoresume_interval seed onnx_safe deepscale deepscale_config deepspeed_mpi
deepspeed_slurm user_script iteration do_train do_valid do_test save_iters global_num_gpus
tokenizer_type padded_vocab_size tokenizer
data_path use_shared_fs train_data_paths test_data_paths valid_data_paths label_data_paths
train_label_data_paths test_label_data_paths valid_label_data_paths pos_train_data_paths
neg_train_data_paths pos_valid_data_paths neg_valid_data_paths pos_test_data_paths neg_test_data_paths
pos_train_label_data_paths neg_train_label_data_paths pos_valid_label_data_paths neg_valid_label_data_paths
pos_test_label_data_paths neg_test_label_data_paths precompute_model_name reward_model_scoring
train_data_weights valid_data_weights test_data_weights weight_by_num_documents weighted_sampler_alpha
data_impl pack_impl dataset_impl train_impl dpo_fp32 dpo_reference_free dpo_beta kto_fp32
kto_desirable_weight kto_undesirable_weight kto_beta allow_chopped mmap_warmup save s3_path s3_chunk_size
config_files load checkpoint_validation_with_forward_pass checkpoint_scale checkpoint_factor extra_save_iters
save_interval no_save_optim no_save_rng no_load_optim no_load_rng finetune batch_size train_iters train_epochs
eval_iters keep_last_n_checkpoints eval_interval split vocab_file merge_file num_workers exit_interval
attention_dropout hidden_dropout weight_decay checkpoint_activations checkpoint_num_layers
deepspeed_activation_checkpointing contiguous_checkpointing checkpoint_in_cpu synchronize_each_layer
profile_backward partition_activations gas clip_grad hysteresis dynamic_loss_scale loss_scale
loss_scale_window min_scale char_level_ppl use_mup coord_check save_base_shapes base_shapes_file
mup_init_scale mup_attn_temp mup_output_temp mup_embedding_mult mup_rp_embedding_mult mup_width_scale
z_loss moe_num_experts moe_top_k moe_router_type moe_lbl_in_fp32 moe_jitter_eps moe_type moe_glu
moe_aux_loss_coeff moe_z_loss_coeff moe_use_residual moe_train_capacity_factor moe_eval_capacity_factor
moe_min_capacity moe_expert_parallel_size enable_expert_tensor_parallelism moe_token_dropping
text_gen_type temperature top_p top_k return_logits maximum_tokens prompt_end sample_input_file
sample_output_file num_samples recompute eval_results_prefix eval_tasks
deepspeed train_batch_size train_micro_batch_size_per_gpu gradient_accumulation_steps optimizer scheduler
fp32_allreduce prescale_gradients gradient_predivide_factor sparse_gradients fp16 bf16 amp gradient_clipping
zero_optimization zero_allow_untested_optimizer curriculum_learning curriculum_seqlen steps_per_print
wall_clock_breakdown dump_state flops_profiler communication_data_type autotuning activation_checkpointing
sparse_attention data_efficiency tensorboard wandb csv_monitor elasticity comms_logger compression_training
checkpoint data_types deepspeed_extra_args load_universal
hostfile include exclude num_nodes num_gpus master_port master_addr launcher force_multi detect_nvlink_pairs
autotuning_run no_ssh_check comment account
""".split()
)


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
    lora: Any = None  # trainer.lora.LoraConfig when the `lora` section is present and enabled

    def __post_init__(self) -> None:
        stage = self.zero_optimization.get("stage", 0)
        if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage <= 3:
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
        if self.optimizer.fused_optimizer_step:
            self._check_fused_optimizer_step()
        if self.lora is not None:
            from trainer.lora import check_run

            check_run(self)

    def _check_fused_optimizer_step(self) -> None:
        """trainer.optim's step replaces DeepSpeed's bf16 ZeRO step; refuse what it does not do."""
        why = None
        if not self.precision.bf16_enabled:
            why = f"it trains bf16 weights, and this config is {self.precision.name}"
        elif self.zero_stage >= 2:
            why = f"it keeps the whole optimizer state on every rank; ZeRO stage {self.zero_stage} shards it"
        elif self.lora is not None:
            why = "a LoRA run's adapters are few and already fp32"
        if why:
            raise JobError(f"config key 'fused-optimizer-step': {why}")

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
            raise JobError(
                "config: set 'vocab-file' (a tokenizer.json) or 'padded-vocab-size' to size the vocabulary"
            )
        path = Path(self.model.vocab_file)
        if not path.is_file():
            raise JobError(f"config key 'vocab-file': {path} does not exist")
        from tokenizers import Tokenizer

        return self.padded_vocab(Tokenizer.from_file(str(path)).get_vocab_size())

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        from trainer.model import ModelConfig  # here, not at the top: reading a config needs no torch

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
        out.update(
            zero_optimization=self.zero_optimization,
            unimplemented=self.unimplemented,
            notes=self.notes,
            files=self.files,
            precision_name=self.precision.name,
            lora=dataclasses.asdict(self.lora) if self.lora else None,
        )
        return out

    def report(self) -> list[str]:
        """Start-up lines: mappings, keys honoured differently, keys not implemented."""
        lines = [f"note: {n}" for n in self.notes]
        lines += [f"handled differently: {k} ({why})" for k, why in sorted(self.handled_differently.items())]
        if self.unimplemented:
            lines.append("not implemented (ignored): " + ", ".join(sorted(self.unimplemented)))
        return lines


def from_dict(
    raw: dict, files: list[str] | None = None, origins: dict[str, tuple[str, str]] | None = None
) -> NeoXConfig:
    """`origins`: {key: (spelling, where it was set)}, for the unknown-key error."""
    raw = {normalise(k): v for k, v in raw.items()}
    ours = (
        set(_EXTRA_KEYS)
        | set(HANDLED_DIFFERENTLY)
        | {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    )
    unknown = [k for k in raw if k not in ours and k not in GPT_NEOX_KEYS]
    if unknown:  # before the sections: a misspelt key must not fall back to its default silently
        raise unknown_keys_error(
            unknown, ours | GPT_NEOX_KEYS, origins or {}, "not known to trainer.train or gpt-neox"
        )
    consumed: set[str] = set()
    sections = {}
    errors: list[str] = []
    for name, cls in SECTIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        consumed |= kwargs.keys()
        sections[name], wrong = _parse(cls, kwargs)
        errors += wrong
    if not errors:  # ranges only once every type is right
        errors = range_errors(sections)
    if errors:
        raise JobError(
            errors[0] if len(errors) == 1 else f"{len(errors)} config errors: " + "; ".join(errors)
        )
    consumed |= set(_EXTRA_KEYS)
    handled = {k: why for k, why in HANDLED_DIFFERENTLY.items() if k in raw}
    unimplemented = {k: v for k, v in raw.items() if k not in consumed and k not in handled}
    zero = raw.get("zero_optimization") or {"stage": 0}
    if not isinstance(zero, dict):
        raise JobError(f"config key 'zero_optimization' must be a mapping, got {zero!r}")
    from trainer.lora import from_raw as lora_from_raw

    return NeoXConfig(
        **sections,
        zero_optimization=dict(zero),
        unimplemented=unimplemented,
        handled_differently=handled,
        notes=[],
        files=list(files or []),
        lora=lora_from_raw(raw.get("lora")),
    )


def load_config(files: list[str | os.PathLike], overrides: list[str] = ()) -> NeoXConfig:
    """Merge NeoX YAML files in order (a later file wins), apply overrides, build the checked config."""
    if not files:
        raise JobError("no config file given")
    raw, origins = merge(files, overrides)
    return from_dict(raw, [str(f) for f in files], origins)
