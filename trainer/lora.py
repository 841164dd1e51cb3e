"""LoRA fine-tuning, applied to the plain model from outside (torchtitan style; trainer.model stays plain).

The NeoX config's `lora` section (keys spelt with `-` or `_`):

    lora:
      rank: 16                 # r
      alpha: 32                # scaling = alpha / rank
      dropout: 0.0             # on the adapters' input
      target-modules: [query_key_value, dense, dense_h_to_4h, dense_4h_to_h]   # the default: all four
      train-embeddings: false  # also train embed_in in full
      train-output-layer: false  # also train the output layer (embed_out) in full
      quantize-base: null      # QLoRA: nf4 or int8 (bitsandbytes) for the blocks' frozen linear weights

`apply_lora` freezes every parameter, then swaps each targeted `nn.Linear` for a `LoRALinear` that
shares the same weight and bias (nothing copied, names unchanged) and adds `lora_A` (rank x in,
PEFT's Kaiming init) and `lora_B` (out x rank, zeros): y = W x + b + B A dropout(x) * alpha / rank.
Only those (and the optional embeddings) require gradients, so DeepSpeed gives only them fp32 master
copies, gradients and optimizer state; the frozen base stays in the run's dtype and is never written.

Checkpoints (trainer.train) leave the frozen base out (DeepSpeed's exclude_frozen_parameters) and
add `lora.json` (these settings, the base the adapters belong to, the trained tensor names); resume
loads the base again from there and the adapters + optimizer from the checkpoint. trainer.export
turns such a checkpoint into a PEFT adapter folder, or with --merge into full Hugging Face weights
(merged into the full-precision base that lora.json names, also after a quantize-base run).

Not combined with LoRA (refused at config time): ZeRO stage 3, fp16 loss scaling, fp8.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from jobs.cli import JobError, atomic_dir, write_json_atomic
from trainer import checkpoint

TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")  # Hugging Face GPT-NeoX names
QUANTIZED = ("nf4", "int8")  # lora.quantize-base: bitsandbytes' 4-bit NormalFloat or 8-bit (LLM.int8)
INFO = "lora.json"  # in every LoRA checkpoint's tag folder
# our parameter names -> PEFT's, for the tensors trained in full (PEFT's modules_to_save)
_FULL = {
    "embed_in.weight": ("embed_in", "gpt_neox.embed_in.weight"),
    "embed_out.weight": ("lm_head", "lm_head.weight"),
}


@dataclass
class LoraConfig:
    enabled: bool = True
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: list(TARGETS))
    train_embeddings: bool = False
    train_output_layer: bool = False
    quantize_base: str | None = None  # QLoRA: the blocks' frozen linear weights in nf4 or int8 (bitsandbytes)

    def __post_init__(self) -> None:
        def bad(key: str, want: str, value) -> JobError:
            return JobError(f"config key 'lora.{key}' must be {want}, got {value!r}")

        for key in ("enabled", "train_embeddings", "train_output_layer"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key.replace("_", "-"), "true or false", getattr(self, key))
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise bad("rank", "a positive integer", self.rank)
        if not isinstance(self.alpha, int | float) or isinstance(self.alpha, bool) or self.alpha <= 0:
            raise bad("alpha", "a positive number", self.alpha)
        if (
            not isinstance(self.dropout, int | float)
            or isinstance(self.dropout, bool)
            or not 0 <= self.dropout < 1
        ):
            raise bad("dropout", "a number in [0, 1)", self.dropout)
        self.alpha, self.dropout = float(self.alpha), float(self.dropout)
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if not isinstance(self.target_modules, list) or not self.target_modules:
            raise bad("target-modules", f"a non-empty list of {', '.join(TARGETS)}", self.target_modules)
        for name in self.target_modules:
            if name not in TARGETS:
                raise JobError(
                    f"config key 'lora.target-modules': {name!r} is not a linear layer of GPT-NeoX "
                    f"(its layers: {', '.join(TARGETS)})"
                )
        self.target_modules = [t for t in TARGETS if t in self.target_modules]  # one order, no repeats
        if self.quantize_base not in (None, *QUANTIZED):
            raise bad("quantize-base", f"one of {', '.join(QUANTIZED)} (or null)", self.quantize_base)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def shape(self) -> dict:
        """What a checkpoint's adapters must agree on to be resumed under this config."""
        return {
            "rank": self.rank,
            "target_modules": self.target_modules,
            "train_embeddings": self.train_embeddings,
            "train_output_layer": self.train_output_layer,
            "quantize_base": self.quantize_base,
        }


def from_raw(raw) -> LoraConfig | None:
    """The `lora` section as read from YAML (None or absent: no LoRA; `enabled: false`: none either)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise JobError(
            f"config key 'lora' must be a mapping (rank, alpha, dropout, target-modules, ...), got {raw!r}"
        )
    from trainer.config import _yaml_number

    keys = {f.name for f in LoraConfig.__dataclass_fields__.values()}
    values = {}
    for k, v in raw.items():
        name = str(k).replace("-", "_")
        if name not in keys:
            known = ", ".join(sorted(n.replace("_", "-") for n in keys))
            raise JobError(f"config key 'lora.{k}' is not known (the lora section has {known})")
        values[name] = _yaml_number(v)
    lc = LoraConfig(**values)
    return lc if lc.enabled else None


def check_run(cfg) -> None:
    """Settings LoRA cannot be combined with: one line, at config time (before any heavy work)."""
    if cfg.zero_stage == 3:
        why = (
            " (model-parallel-size / pipe-parallel-size above 1 map to stage 3: set both to 1)"
            if cfg.parallel.mapped_to_zero3
            else ""
        )
        raise JobError(
            f"config key 'lora' cannot be combined with ZeRO stage 3{why}: every rank holds the whole "
            f"frozen base (stages 1 and 2 shard the adapters' optimizer state); use zero_optimization.stage "
            f"0, 1 or 2"
        )
    if cfg.precision.fp16_enabled:
        raise JobError(
            "config key 'lora' cannot be combined with fp16: the frozen base stays in the run's dtype "
            "and fp16 loss scaling over the adapters is not supported; use bf16 (or fp32)"
        )
    if cfg.lora.quantize_base and importlib.util.find_spec("bitsandbytes") is None:
        raise JobError(
            f"config key 'lora.quantize-base' {cfg.lora.quantize_base}: needs the bitsandbytes package "
            "(the qlora extra: pip install 'neox-pipeline[qlora]')"
        )
    if cfg.model.fp8:
        raise JobError(
            "config key 'lora' cannot be combined with 'fp8' yet: torchao would swap the adapted "
            "linear layers; turn fp8 off"
        )


# ---- the adapted layer -------------------------------------------------------------------------------


class LoRALinear(nn.Linear):
    """An nn.Linear (the same weight and bias objects as the layer it replaces) plus a low-rank bypass."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float,
        generator: torch.Generator | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        # made on the CPU (small), so the same seed gives the same adapters on any device
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, dtype=torch.float32)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)  # as PEFT
            nn.init.zeros_(self.lora_B.weight)  # the bypass starts at zero: the base model's output
        self.lora_A.to(base.weight.device)
        self.lora_B.to(base.weight.device)
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantized = self._modules.get("base_layer")  # quantize_base: bitsandbytes' layer holds the weight
        out = quantized(x) if quantized is not None else F.linear(x, self.weight, self.bias)
        a, b = self.lora_A.weight, self.lora_B.weight
        low = F.linear(self.lora_dropout(x).to(a.dtype), a)  # (..., rank)
        if low.dtype != out.dtype:  # fp32 adapters beside a 16-bit base outside DeepSpeed: add in out's dtype
            return out + (F.linear(low, b) * self.scaling).to(out.dtype)
        # out + scaling * low B^T as one GEMM whose epilogue adds `out`: no extra passes over the output
        flat = torch.addmm(
            out.reshape(-1, out.shape[-1]), low.reshape(-1, low.shape[-1]), b.t(), alpha=self.scaling
        )
        return flat.view(out.shape)

    def delta(self) -> torch.Tensor:
        """B A * scaling in fp32: what merging adds to the weight."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def extra_repr(self) -> str:
        base = "quantized" if "base_layer" in self._modules else f"bias={self.bias is not None}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {base}, "
                f"rank={self.lora_A.out_features}, scaling={self.scaling:g}")  # fmt: skip


def apply_lora(model: nn.Module, lc: LoraConfig, seed: int = 0) -> dict:
    """Freeze `model`, wrap its targeted linear layers, unfreeze the adapters (and the optional
    embeddings); returns counts for the log. The adapters' init depends on `seed` only."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise JobError("apply_lora: the model already has LoRA adapters")
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    found = dict.fromkeys(lc.target_modules, 0)
    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        if child in found and type(module) is nn.Linear and name.startswith("layers."):
            wrapped = LoRALinear(module, lc.rank, lc.alpha, lc.dropout, generator)
            setattr(model.get_submodule(parent_name), child, wrapped)
            found[child] += 1
    missing = [t for t, n in found.items() if n == 0]
    if missing:
        raise JobError(
            f"config key 'lora.target-modules': the model has no linear layer named {missing[0]!r}"
        )
    if lc.train_embeddings:
        model.embed_in.weight.requires_grad_(True)
    if lc.train_output_layer:
        model.output_weight().requires_grad_(True)  # with tied embeddings, that is embed_in
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "layers": sum(found.values()),
        "trainable": trainable,
        "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad),
    }


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def quantize_base(model: nn.Module, kind: str, compute_dtype: torch.dtype) -> int:
    """QLoRA: every frozen linear layer of the blocks (the adapted ones keep their adapters) computes
    with bitsandbytes' nf4 or int8 copy of its weight, quantized where it will run (the GPU if there
    is one: bitsandbytes' layers do not move once quantized). Embeddings, norms and the output layer
    stay as they are. Returns how many layers were quantized."""
    import bitsandbytes as bnb

    # this rank's GPU (the process group, which sets the current device, comes after the model is built)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    n = 0
    for name, module in list(model.layers.named_modules()):
        if not isinstance(module, nn.Linear) or name.endswith(("lora_A", "lora_B")):
            continue
        w, b = module.weight.detach(), None if module.bias is None else module.bias.detach()
        with torch.device("meta"):
            if kind == "nf4":
                q = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=b is not None, compute_dtype=compute_dtype,
                                      quant_type="nf4")  # fmt: skip
            else:
                q = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=b is not None, has_fp16_weights=False)
        if kind == "nf4":
            q.weight = bnb.nn.Params4bit(w.to(compute_dtype), requires_grad=False, quant_type="nf4")
        else:
            # Int8Params quantizes only on a move from the CPU: a weight already on the GPU would stay bf16
            q.weight = bnb.nn.Int8Params(
                w.to("cpu", compute_dtype), requires_grad=False, has_fp16_weights=False
            )
        if b is not None:
            q.bias = nn.Parameter(b.to(compute_dtype), requires_grad=False)
        q.to(device)  # quantizes here
        if isinstance(module, LoRALinear):
            del module.weight, module.bias
            module.base_layer = q
        else:
            parent, _, child = name.rpartition(".")
            setattr(model.layers.get_submodule(parent), child, q)
        n += 1
    return n


def merge(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Fold every adapter into its layer's weight (summed in fp32, stored in `dtype`, default the
    weight's) and drop the adapters: a plain model again, whose state dict is a normal one."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear) and "base_layer" in module._modules:
            raise JobError(
                "merge: the base is quantized; merge into the full-precision base (trainer.export --merge)"
            )
        if isinstance(module, LoRALinear):
            plain = nn.Linear(
                module.in_features, module.out_features, bias=module.bias is not None, device="meta"
            )
            with torch.no_grad():
                plain.weight = nn.Parameter(
                    (module.weight.float() + module.delta()).to(dtype or module.weight.dtype)
                )
                plain.bias = module.bias
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, plain)
    return model


def fingerprint(model: nn.Module) -> str:
    """A digest of the frozen parameters' bits (per tensor: the sums of its raw bits, plain and
    position-weighted, in chunks): cheap on a GPU, and a change to any frozen weight changes it."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    chunk = 1 << 22
    h = hashlib.sha256()
    weights = None
    for name, p in model.named_parameters():
        if p.requires_grad:
            continue
        bits = p.detach().reshape(-1).view(ints[p.element_size()])
        if weights is None or weights.device != bits.device:
            weights = torch.arange(chunk, device=bits.device, dtype=torch.int64) % 65521 + 1
        total = bits.sum(dtype=torch.int64).item()
        weighted = torch.zeros((), dtype=torch.int64, device=bits.device)
        for c in bits.split(chunk):  # int64 overflow wraps around, the same way every time
            weighted += (c.to(torch.int64) * weights[: c.numel()]).sum()
        weighted = weighted.item()
        h.update(f"{name}:{total}:{weighted};".encode())
    return h.hexdigest()[:16]


def run_summary(model: nn.Module, start_print: str) -> dict:
    """For train-stats.json; a frozen base that changed during training is an error, not a statistic."""
    end = fingerprint(model)
    if end != start_print:
        raise JobError(
            f"LoRA: the frozen base weights changed during training (fingerprint {start_print} -> {end})"
        )
    params = list(model.parameters())
    return {
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "frozen_parameters": sum(p.numel() for p in params if not p.requires_grad),
        "base_fingerprint": end,
        "base_unchanged": True,
        "base": getattr(model, "lora_base", None),
    }


def flops_per_token(mcfg, seq_len: int, lc: LoraConfig) -> float:
    """Training FLOPs per token with a frozen base: forward + the input gradients (2 x forward), the
    weight gradients only for the trained tensors (recomputation not counted, as for full training)."""
    full = mcfg.flops_per_token(seq_len)  # 3 x forward
    return full * 2 / 3


# ---- where a LoRA run starts -------------------------------------------------------------------------


def is_lora_checkpoint(tag_dir: str | os.PathLike) -> bool:
    return (Path(tag_dir) / INFO).is_file()


def read_info(tag_dir: str | os.PathLike) -> dict:
    return json.loads((Path(tag_dir) / INFO).read_text())


def write_info(tag_dir: str | os.PathLike, model: nn.Module, cfg) -> None:
    """Rank 0, before the completeness marker (which then lists it)."""
    info = {
        "lora": asdict(cfg.lora),
        "base": getattr(model, "lora_base", None),
        "trainable": trainable_names(model),
    }
    write_json_atomic(Path(tag_dir) / INFO, info)


def _our_checkpoint(path: str | os.PathLike) -> str | None:
    return checkpoint.ds_checkpoint_tag(path) if Path(path).is_dir() else None


def resume_point(cfg, log) -> tuple[str, str, bool] | None:
    """As trainer.start.resume_point, but only LoRA checkpoints resume: a full checkpoint of ours in
    `load` is the base; one in `save` is refused (its weights would be mistaken for adapters)."""
    t = cfg.train
    for where, tag, module_only in checkpoint.resume_candidates(t, log):
        tag_dir = Path(where) / tag
        if is_lora_checkpoint(tag_dir):
            check_shape(tag_dir, cfg.lora)
            return where, tag, module_only
        if where == t.save and where != t.load:
            raise JobError(
                f"save {where}: holds {tag}, a full checkpoint (no {INFO}), not LoRA adapters; name a "
                f"new 'save' folder, or this one in 'load' to train adapters on its weights"
            )
    return None


def check_shape(tag_dir: Path, lc: LoraConfig) -> None:
    theirs = read_info(tag_dir)["lora"]
    ours = lc.shape()
    for key, value in ours.items():
        if theirs.get(key) != value:
            raise JobError(
                f"{tag_dir}: its adapters have lora.{key.replace('_', '-')} {theirs.get(key)!r}, "
                f"the config says {value!r}; resume with the same LoRA settings or a new 'save'"
            )


def base_source(cfg, resume: tuple[str, str, bool] | None, log) -> str:
    """The base weights' path: `load`, unless that is a LoRA checkpoint (then the base it names);
    with no `load`, the base the resumed checkpoint names."""
    load = cfg.train.load
    if load:
        tag = _our_checkpoint(load)
        if tag and is_lora_checkpoint(Path(load) / tag):
            base = (read_info(Path(load) / tag).get("base") or {}).get("path")
            if not base:
                raise JobError(f"load {load}: its LoRA checkpoint {tag} names no base weights")
            return base
        if resume and Path(resume[0]) != Path(load):
            recorded = (read_info(Path(resume[0]) / resume[1]).get("base") or {}).get("path")
            if recorded and Path(recorded) != Path(load).resolve():
                log(
                    f"note: {resume[0]}/{resume[1]} was trained on {recorded}; using 'load' {load} as the base"
                )
        return load
    if resume:
        base = (read_info(Path(resume[0]) / resume[1]).get("base") or {}).get("path")
        if base:
            return base
    raise JobError(
        "config key 'lora' needs 'load': the base weights (a Hugging Face folder, a slim GPT-NeoX "
        "checkpoint or a full checkpoint of ours) that the adapters train on"
    )


def load_base(path: str, slim_cfg) -> tuple[nn.Module, str]:
    """The frozen base's weights: a Hugging Face folder, a slim checkpoint (architecture from
    `slim_cfg`, a ModelConfig), or a full checkpoint of ours."""
    p = Path(path)
    if not p.exists():
        raise JobError(f"LoRA base {path}: does not exist")
    if (p / "config.json").is_file() or checkpoint.slim_tag_dir(p) is not None:
        return checkpoint.load_pretrained(p, None if (p / "config.json").is_file() else slim_cfg)
    from trainer import export

    folder, tag = export.find_checkpoint(p)
    if is_lora_checkpoint(folder / tag):
        raise JobError(f"LoRA base {path}: {tag} is itself a LoRA checkpoint, not full weights")
    mcfg, _ = checkpoint.read_model_config(folder / tag)
    state = {k: v for k, v in export.load_state(folder, tag).items() if not k.startswith("rotary.")}
    if mcfg.tied_embeddings:
        state.pop("embed_out.weight", None)
    return checkpoint.build_model(mcfg, state), "full checkpoint of ours"


def build_model(cfg, resume, log, run_settings) -> tuple[nn.Module, str]:
    """The base (frozen, from `base_source`) with fresh adapters; a resume then loads the trained ones."""
    base = base_source(cfg, resume, log)
    model, kind = load_base(base, cfg.model_config(vocab_size=1))  # slim: vocab from the embedding
    if cfg.precision.name == "fp32":
        model.float()
    run_settings(model, cfg)
    counts = apply_lora(model, cfg.lora, seed=cfg.data.seed)
    model.lora_base = {"path": str(Path(base).resolve()), "kind": kind}
    quantized = ""
    if cfg.lora.quantize_base:
        dtype = torch.float32 if cfg.precision.name == "fp32" else torch.bfloat16
        n = quantize_base(model, cfg.lora.quantize_base, dtype)
        quantized = f", {n} linear layers in {cfg.lora.quantize_base}"
    if resume:  # the checkpoint's tensors are loaded non-strictly (no base in it): its names must be ours
        theirs = read_info(Path(resume[0]) / resume[1]).get("trainable")
        if theirs != trainable_names(model):
            raise JobError(
                f"{resume[0]}/{resume[1]}: its trained tensors ({len(theirs or [])}) are not this model's "
                f"adapters ({len(trainable_names(model))}); resume with the same model and LoRA settings"
            )
    lc = cfg.lora
    return model, (
        f"{kind} {base} (frozen{quantized}) + LoRA rank {lc.rank} alpha {lc.alpha:g} on {counts['layers']} "
        f"linear layers ({', '.join(lc.target_modules)}): {counts['trainable'] / 1e6:.2f}M trainable, "
        f"{counts['frozen'] / 1e6:.1f}M frozen parameters"
    )


# ---- export: PEFT's adapter folder -----------------------------------------------------------------


def peft_state(state: dict[str, torch.Tensor], lc_dict: dict) -> dict[str, torch.Tensor]:
    """Our trained tensors under PEFT's names (base_model.model.gpt_neox.layers.N....lora_A.weight)."""
    out = {}
    for name, tensor in state.items():
        if ".lora_A." in name or ".lora_B." in name:
            out[f"base_model.model.gpt_neox.{name}"] = tensor
        elif name in _FULL:
            out[f"base_model.model.{_FULL[name][1]}"] = tensor
        else:
            raise JobError(f"LoRA checkpoint: unexpected tensor {name} (not an adapter)")
    return out


def peft_config(lc_dict: dict, trained: list[str], base_name: str | None) -> dict:
    """adapter_config.json as PEFT writes it for LoraConfig (fields it does not find take its defaults)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": lc_dict["rank"],
        "lora_alpha": lc_dict["alpha"],
        "lora_dropout": lc_dict["dropout"],
        "target_modules": lc_dict["target_modules"],
        "modules_to_save": [_FULL[n][0] for n in _FULL if n in trained] or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


_ARCH = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "tied_embeddings")


def trained_state(folder: Path, tag: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(lora.json, the trained tensors in fp32) of a LoRA checkpoint (master copies at ZeRO 1 and 2)."""
    from trainer import export

    info = read_info(folder / tag)
    names = info["trainable"]
    state = _stage0_masters(folder / tag, names) or export.load_state(folder, tag)
    missing = [n for n in names if n not in state]
    if missing:
        raise JobError(f"{folder / tag}: trained tensor {missing[0]} is missing ({len(missing)} in all)")
    return info, {n: state[n].float() for n in names}


def _stage0_masters(tag_dir: Path, names: list[str]) -> dict[str, torch.Tensor] | None:
    """ZeRO 0 with bf16 keeps the fp32 master copies beside the (bf16) module state, in one group per
    parameter group in the trainable parameters' order (trainer.engine.param_groups); None elsewhere."""
    files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    if any(tag_dir.glob("*_optim_states.pt")) or not files:
        return None
    saved = torch.load(files[0], map_location="cpu", weights_only=False)
    groups = (
        (saved.get("optimizer") or {}).get("fp32_groups")
        if isinstance(saved.get("optimizer"), dict)
        else None
    )
    flat = [t for g in groups or [] for t in g]
    module = saved.get("module") or {}
    if len(flat) != len(names) or any(
        n not in module or flat[i].shape != module[n].shape for i, n in enumerate(names)
    ):
        return None  # not laid out as expected: the module state it is
    return dict(zip(names, flat, strict=True))


def checked_base(folder: Path, tag: str, info: dict) -> nn.Module:
    """The base the checkpoint names, loaded and checked against the architecture it was trained with."""
    mcfg, _ = checkpoint.read_model_config(folder / tag)
    base = (info.get("base") or {}).get("path")
    if not base:
        raise JobError(f"{folder / tag}: {INFO} names no base weights")
    model, _ = load_base(base, mcfg)
    for key in _ARCH:
        if getattr(model.cfg, key) != getattr(mcfg, key):
            raise JobError(
                f"LoRA base {base}: {key} is {getattr(model.cfg, key)}, the adapters were trained "
                f"with {getattr(mcfg, key)}"
            )
    return model


def attach(model: nn.Module, info: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """Wrap `model` as the checkpoint's LoRA settings say and put the trained tensors in place."""
    apply_lora(model, LoraConfig(**info["lora"]))
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in state.items():
            params[name].copy_(tensor)
    return model


def adapted_base(folder: Path, tag: str, info: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """The base the checkpoint names, with its trained adapters in place."""
    return attach(checked_base(folder, tag, info), info, state)


def export_checkpoint(
    folder: Path, tag: str, out: Path, dtype: str, merge_weights: bool, base_out: Path | None, dtypes: dict
) -> dict:
    """trainer.export for a LoRA checkpoint: PEFT's adapter folder, or (--merge) full HF weights;
    --base-out also writes the base as an HF folder (for bases that are not one: slim, ours)."""
    from safetensors.torch import save_file

    _, neox = checkpoint.read_model_config(folder / tag)
    info, state = trained_state(folder, tag)
    run_dtype = {"fp16": "float16", "bf16": "bfloat16"}.get(neox.get("precision_name", ""), "float32")
    vocab_file = (neox.get("model") or {}).get("vocab_file")
    stats = {"checkpoint": str(folder / tag), "out": str(out), "lora": info["lora"], "base": info.get("base")}
    if merge_weights or base_out:
        from trainer import model_card

        model = checked_base(folder, tag, info)  # one copy of the base in memory (20B: about 41 GB)
        params = sum(t.numel() for t in model.state_dict().values())
        full_dtype = dtypes[run_dtype if dtype == "auto" else dtype]
        generation = model_card.generation_config(neox)
    if base_out:
        checkpoint.save_hf(model, base_out, full_dtype, tokenizer=vocab_file, replace=False,
                           extra_files={"generation_config.json": generation})  # fmt: skip
        stats["base_out"] = str(base_out)
    if merge_weights:
        out_dtype = full_dtype
        merge(attach(model, info, state), out_dtype)
        card = model_card.card(neox, str(folder / tag), checkpoint.step_of(tag), params,
                               kind="LoRA fine-tune (adapters merged)")  # fmt: skip
        checkpoint.save_hf(model, out, out_dtype, tokenizer=vocab_file, replace=False,
                           extra_files={"generation_config.json": generation, "README.md": card})  # fmt: skip
        stats.update(
            kind="merged Hugging Face weights",
            dtype=str(out_dtype).removeprefix("torch."),
            parameters=sum(t.numel() for t in model.state_dict().values()),
        )
    else:
        out_dtype = dtypes["float32" if dtype == "auto" else dtype]  # PEFT keeps adapters in fp32
        base = info.get("base") or {}
        base_name = str(base_out.resolve()) if base_out else base.get("path")
        if not base_out and base.get("kind") != "Hugging Face folder":
            stats["note"] = (
                f"the base ({base.get('kind')}) is not a Hugging Face folder: add --base-out DIR for one"
            )
        tensors = {k: v.to(out_dtype).contiguous() for k, v in peft_state(state, info["lora"]).items()}
        with atomic_dir(out, replace=False) as tmp:
            save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            cfg = peft_config(info["lora"], info["trainable"], base_name)
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        stats.update(
            kind="PEFT LoRA adapters",
            dtype=str(out_dtype).removeprefix("torch."),
            parameters=sum(t.numel() for t in tensors.values()),
        )
    stats["bytes"] = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return stats
