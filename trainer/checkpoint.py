"""Weights in and out: Hugging Face folders, the GPT-NeoX "slim" layout, DeepSpeed checkpoints.

- `load_hf(path)`: a Hugging Face GPT-NeoX folder (config.json plus safetensors or .bin shards) to
  our model. HF names are ours with a `gpt_neox.` prefix; the output layer is `embed_out` (older
  transformers) or `lm_head` (newer).
- `load_slim(path, cfg)`: the published 20B layout (FORMATS.md section 2): `latest` names the tag,
  `TAG/layer_XX-model_YY-model_states.pt` hold the pipeline layers, each split over `model_YY`
  tensor-parallel shards, merged here by the per-key rules below.
- `save_hf(model, out)`: safetensors shards (+ index) and a config.json that
  `transformers.GPTNeoXForCausalLM.from_pretrained` loads with the same logits.

Which weights a training run starts from is decided in trainer.start (`load` holding a slim tag,
an HF folder, or a checkpoint of ours).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from jobs.cli import JobError, atomic_dir
from jobs.fetch.verify import hash_file
from trainer.model import GPTNeoX, ModelConfig, Rotary

# Hugging Face hidden_act values -> our activation names
_HF_ACT = {
    "gelu": "gelu",
    "gelu_fast": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}


def config_from_hf(hf: dict) -> ModelConfig:
    act = hf.get("hidden_act", "gelu")
    if act not in _HF_ACT:
        raise JobError(f"config.json: hidden_act {act!r} is not supported (one of {sorted(_HF_ACT)})")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise JobError(f"config.json: rope_type {rope['rope_type']!r} is not supported (only default)")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf.get("intermediate_size") or 4 * hf["hidden_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rotary_pct=rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)),
        rotary_base=rope.get("rope_theta", hf.get("rotary_emb_base", 10000.0)),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
        parallel_residual=hf.get("use_parallel_residual", True),
        tied_embeddings=hf.get("tie_word_embeddings", False),
        activation=_HF_ACT[act],
    )


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        # both spellings: older transformers read rotary_*, newer rope_parameters
        "rotary_pct": cfg.rotary_pct,
        "rotary_emb_base": cfg.rotary_base,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": cfg.rotary_base,
            "partial_rotary_factor": cfg.rotary_pct,
        },
        "layer_norm_eps": cfg.layer_norm_eps,
        "use_parallel_residual": cfg.parallel_residual,
        "tie_word_embeddings": cfg.tied_embeddings,
        "hidden_act": "gelu_fast" if cfg.activation == "gelu_tanh" else "gelu",
        "attention_bias": True,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def build_model(
    cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None
) -> GPTNeoX:
    """A model holding exactly `state` (our names); no random init, so 20B does not pay for one."""
    with torch.device("meta"):
        model = GPTNeoX(cfg)
    check_state(model, state)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True, strict=True)
    model.rotary = Rotary(cfg.rot_dim, cfg.max_position_embeddings, cfg.rotary_base)  # was on meta
    return model


def check_state(model: GPTNeoX, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """One line naming the first missing, unexpected or mis-shaped tensor."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, shape in expected.items():
        if name not in state:
            raise JobError(f"{source}: tensor {name} {list(shape)} is missing")
        if tuple(state[name].shape) != shape:
            raise JobError(
                f"{source}: tensor {name} has shape {list(state[name].shape)}, the config expects {list(shape)}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise JobError(
            f"{source}: unexpected tensor {extra[0]} {list(state[extra[0]].shape)} ({len(extra)} in all)"
        )


# ---- Hugging Face ----------------------------------------------------------------------------

_HF_BUFFERS = re.compile(r"attention\.(rotary_emb\.inv_freq|bias|masked_bias)$")


def _from_hf_name(name: str) -> str | None:
    if _HF_BUFFERS.search(name):
        return None
    if name in ("embed_out.weight", "lm_head.weight"):
        return "embed_out.weight"
    return name.removeprefix("gpt_neox.")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _hf_weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / f for f in files]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).exists():
            return [folder / single]
    raise JobError(f"{folder}: no model.safetensors, pytorch_model.bin or shard index found")


def load_hf_state(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    folder = Path(path)
    if not (folder / "config.json").exists():
        raise JobError(f"{folder}: not a Hugging Face model folder (no config.json)")
    cfg = config_from_hf(json.loads((folder / "config.json").read_text()))
    state: dict[str, torch.Tensor] = {}
    for f in _hf_weight_files(folder):
        if not f.exists():
            raise JobError(f"{f}: weight shard named in the index is missing")
        for name, tensor in _read_tensors(f).items():
            ours = _from_hf_name(name)
            if ours is not None:
                state[ours] = tensor
    if cfg.tied_embeddings:
        state.pop("embed_out.weight", None)  # transformers may store the tied copy too
    return cfg, state


def load_hf(path: str | os.PathLike, dtype: torch.dtype | None = None) -> GPTNeoX:
    """Our model with the weights of a Hugging Face GPT-NeoX folder; `model(input_ids)` gives logits."""
    cfg, state = load_hf_state(path)
    return build_model(cfg, state, dtype)


def save_hf(
    model: GPTNeoX,
    out: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int = 5 * 1024**3,
    tokenizer: str | os.PathLike | None = None,
    replace: bool = True,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a Hugging Face folder (safetensors shards, index, config.json, the tokenizer, `extra_files`
    such as the model card) via a temp dir + rename; `replace=False`: only into a new or empty folder
    (checked again at the rename)."""
    from safetensors.torch import save_file

    out = Path(out)
    with atomic_dir(out, replace=replace) as tmp:
        state = {}
        for name, tensor in model.state_dict().items():
            hf_name = "embed_out.weight" if name == "embed_out.weight" else f"gpt_neox.{name}"
            state[hf_name] = tensor.detach().to(dtype).contiguous()
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name, tensor in state.items():
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = tensor
            size += nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = (
                "model.safetensors"
                if len(shards) == 1
                else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            )
            save_file(shard, str(tmp / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config_to_hf(model.cfg, dtype), indent=2) + "\n")
        if tokenizer is not None and Path(tokenizer).is_file():
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out


# ---- GPT-NeoX slim layout ----------------------------------------------------------------------

# how each per-layer key's tensor-parallel shards combine (FORMATS.md section 2)
_CONCAT0 = (
    "attention.query_key_value.weight",
    "attention.query_key_value.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
)
_CONCAT1 = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")
_SUM = ("attention.dense.bias", "mlp.dense_4h_to_h.bias")
_AVERAGE = (
    "input_layernorm.weight",
    "input_layernorm.bias",
    "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",
    "norm.weight",
    "norm.bias",
)
_SLIM_FILE = re.compile(r"layer_(\d+)-model_(\d+)-model_states\.pt$")


def merge_tp(key: str, shards: list[torch.Tensor], where: str) -> torch.Tensor:
    """Combine one tensor's tensor-parallel shards into the unsplit tensor."""
    if key in _CONCAT0:
        return torch.cat(shards, dim=0)
    if key in _CONCAT1:
        return torch.cat(shards, dim=1)
    if key in _SUM:
        return torch.stack([s.float() for s in shards]).sum(0).to(shards[0].dtype)
    if key in _AVERAGE:
        return torch.stack([s.float() for s in shards]).mean(0).to(shards[0].dtype)
    raise JobError(f"{where}: tensor {key} has no tensor-parallel merge rule")


def slim_tag_dir(path: str | os.PathLike) -> Path | None:
    """The tag folder of a slim checkpoint at `path` (via `latest`), or None if it is not one."""
    path = Path(path)
    latest = path / "latest"
    if not latest.is_file():
        return None
    first = "layer_00-model_00-model_states.pt"
    tag_dir = path / latest.read_text().strip()
    if (tag_dir / first).exists():
        return tag_dir
    # `load` and `save` may be one folder (the guide's setup): once the trainer has saved there,
    # `latest` names its own checkpoint, and the slim tag is the one folder holding layer files
    slim = [d for d in sorted(path.iterdir()) if d.is_dir() and (d / first).exists()]
    return slim[0] if len(slim) == 1 else None


def load_slim_state(path: str | os.PathLike, num_layers: int) -> dict[str, torch.Tensor]:
    """Merge a slim checkpoint's pipeline layers and tensor-parallel shards into our names."""
    tag_dir = slim_tag_dir(path)
    if tag_dir is None:
        raise JobError(
            f"{path}: not a slim GPT-NeoX checkpoint (no latest -> TAG/layer_00-model_00-model_states.pt)"
        )
    files: dict[int, dict[int, Path]] = {}
    for f in tag_dir.iterdir():
        m = _SLIM_FILE.search(f.name)
        if m:
            files.setdefault(int(m[1]), {})[int(m[2])] = f
    tp = len(files[0])

    def merged_layer(idx: int) -> dict[str, torch.Tensor]:
        if idx not in files:
            raise JobError(
                f"{tag_dir}: layer_{idx:02d}-model_*-model_states.pt is missing ({num_layers} layers expected)"
            )
        if sorted(files[idx]) != list(range(tp)):
            raise JobError(
                f"{tag_dir}: layer_{idx:02d} has shards {sorted(files[idx])}, expected 0..{tp - 1}"
            )
        parts = [
            torch.load(files[idx][r], map_location="cpu", weights_only=True, mmap=True) for r in range(tp)
        ]
        out = {}
        for key in parts[0]:
            if key.endswith("rotary_emb.inv_freq"):
                continue  # a buffer, recomputed from the config
            where = f"{tag_dir.name}/layer_{idx:02d}"
            out[key] = parts[0][key] if tp == 1 else merge_tp(key, [p[key] for p in parts], where)
        return out

    state: dict[str, torch.Tensor] = {}
    # layer 0: the vocab-parallel embedding; 1: a parameter-free stage; 2..n+1: blocks;
    # n+2: parameter-free; n+3: final norm; n+4: the output layer (absent when tied)
    emb = [torch.load(files[0][r], map_location="cpu", weights_only=True, mmap=True) for r in range(tp)]
    state["embed_in.weight"] = torch.cat([e["word_embeddings.weight"] for e in emb], dim=0)
    for i in range(num_layers):
        for key, tensor in merged_layer(i + 2).items():
            state[f"layers.{i}.{key}"] = tensor
    for key, tensor in merged_layer(num_layers + 3).items():
        state[f"final_layer_norm.{key.removeprefix('norm.')}"] = tensor
    out_idx = num_layers + 4
    if out_idx in files:
        parts = [
            torch.load(files[out_idx][r], map_location="cpu", weights_only=True, mmap=True) for r in range(tp)
        ]
        state["embed_out.weight"] = torch.cat([p["final_linear.weight"] for p in parts], dim=0)
    return state


def load_slim(path: str | os.PathLike, cfg: ModelConfig, dtype: torch.dtype | None = None) -> GPTNeoX:
    return build_model(cfg, load_slim_state(path, cfg.num_layers), dtype)


# ---- starting points and our own checkpoints -----------------------------------------------------


def empty_model(cfg: ModelConfig) -> GPTNeoX:
    """A model with uninitialised storage, for weights that a checkpoint load will overwrite."""
    with torch.device("meta"):
        model = GPTNeoX(cfg)
    model.to_empty(device="cpu")
    model.rotary = Rotary(cfg.rot_dim, cfg.max_position_embeddings, cfg.rotary_base)
    return model


MODEL_CONFIG = "model_config.json"
COMPLETE = "complete.json"  # written last, after every rank's files are durable: the checkpoint counts
_STEP = re.compile(r"global_step(\d+)$")


def save_engine(
    engine,
    folder: str | os.PathLike,
    tag: str,
    state,
    mcfg: ModelConfig,
    neox: dict,
    rank: int,
    marker_follows: bool = False,
    exclude_frozen: bool = False,
) -> None:
    """A DeepSpeed checkpoint as every entry point writes it: the engine's files with the run's
    trainer.state.TrainState as client_state, then (rank 0) model_config.json."""
    engine.save_checkpoint(
        str(folder), tag=tag, client_state=state.to_client(), exclude_frozen_parameters=exclude_frozen
    )
    if rank == 0:
        write_model_config(Path(folder) / tag, mcfg, neox, marker_follows=marker_follows)


def write_model_config(
    tag_dir: str | os.PathLike, cfg: ModelConfig, neox: dict, marker_follows: bool = False
) -> None:
    """`marker_follows`: this checkpoint counts only once COMPLETE exists (trainer.train); without it
    (Determined, whose own upload decides completeness) model_config.json is the last file written."""
    from dataclasses import asdict

    from jobs.cli import write_json_atomic

    payload = {"model": asdict(cfg), "neox": neox}
    if marker_follows:
        payload["complete_marker"] = True
    write_json_atomic(Path(tag_dir) / MODEL_CONFIG, payload)


def read_model_config(tag_dir: str | os.PathLike) -> tuple[ModelConfig, dict]:
    data = json.loads((Path(tag_dir) / MODEL_CONFIG).read_text())
    return ModelConfig(**data["model"]), data.get("neox", {})


def load_pretrained(path: str | os.PathLike, yaml_cfg: ModelConfig | None) -> tuple[GPTNeoX, str]:
    """Weights to fine-tune from: a Hugging Face folder (config.json decides the architecture) or a
    slim layout (the NeoX YAML decides it, the embedding's rows the padded vocabulary)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return load_hf(path), "Hugging Face folder"
    if slim_tag_dir(path) is not None:
        if yaml_cfg is None:
            raise JobError(f"{path}: a slim checkpoint needs the NeoX config for its architecture")
        state = load_slim_state(path, yaml_cfg.num_layers)
        from dataclasses import replace

        cfg = replace(yaml_cfg, vocab_size=state["embed_in.weight"].shape[0])
        return build_model(cfg, state), "GPT-NeoX slim checkpoint"
    if not path.exists():
        raise JobError(f"load {path}: does not exist")
    raise JobError(f"load {path}: neither a Hugging Face folder (config.json), a slim checkpoint nor ours")


# ---- which of our checkpoints count: completeness markers, resume choice, pruning -----------------
#
# A checkpoint of trainer.train is complete once TAG/complete.json exists: it is written by rank 0
# after every rank has saved and the files are fsynced, and lists every file with its size and sha256
# (each rank hashes the files it wrote). DeepSpeed writes `latest` before that, so `latest` alone
# proves nothing. Checkpoints written before markers existed ("legacy": model_config.json, written
# last then, without the `complete_marker` flag, plus DeepSpeed model states) count as complete.
# Folders that are neither (a run killed while saving) are reported and left alone; a later save that
# needs the name first moves such a folder aside. Folders that are not ours (the slim 20B layout,
# which may share the `save` folder) are never touched. Sizes say a checkpoint is complete; the
# hashes say it is intact, checked by `intact_resume` (trainer.train), trainer.export and the mirror.

COMPLETE_STATES = ("complete", "legacy")


def step_of(tag: str) -> int | None:
    m = _STEP.match(tag)
    return int(m[1]) if m else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(tag_dir: Path) -> list[Path]:
    """The checkpoint's files; hidden temporaries (an interrupted atomic write) and the marker excluded."""
    return sorted(
        p
        for p in tag_dir.rglob("*")
        if p.is_file()
        and p.name != COMPLETE
        and not any(part.startswith(".") for part in p.relative_to(tag_dir).parts)
    )


HASH = "sha256"  # the fetcher's hash too, so a download is checked against the trainer's record for free


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    return hash_file(Path(path), on_bytes=on_bytes)[HASH]


def hash_files(
    paths: list[Path], on_bytes: Callable[[int], None] | None = None, workers: int = 4
) -> dict[Path, str]:
    """sha256 of each file, several at a time."""
    if not paths:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        return dict(zip(paths, pool.map(lambda p: file_sha256(p, on_bytes), paths), strict=True))


def sync_rank_files(tag_dir: str | os.PathLike, rank: int) -> dict[str, str]:
    """fsync the shards DeepSpeed names after this data-parallel rank (zero_pp_rank_R_...) and hash them
    here, on the rank that wrote them; returns {relative path: sha256} for rank 0's complete.json."""
    tag_dir = Path(tag_dir)
    mine = [p for p in _files(tag_dir) if p.name.startswith(f"zero_pp_rank_{rank}_")]
    for p in mine:
        _fsync(p)
    return {p.relative_to(tag_dir).as_posix(): h for p, h in hash_files(mine).items()}


def mark_complete(
    tag_dir: str | os.PathLike, iteration: int, world_size: int, hashes: dict[str, str] | None = None
) -> dict:
    """Rank 0, after a barrier that every rank passed once its files were written: make what rank 0 sees
    durable, then write COMPLETE atomically (temp name, fsync, rename, fsync of the folder). `hashes`: the
    other ranks' files, hashed where they were written; rank 0 hashes the rest."""
    import datetime
    import uuid

    tag_dir = Path(tag_dir)
    files = _files(tag_dir)
    for p in files:
        _fsync(p)
    for d in {p.parent for p in files} | {tag_dir}:
        _fsync(d)
    hashes = dict(hashes or {})
    todo = [p for p in files if p.relative_to(tag_dir).as_posix() not in hashes]
    hashes.update({p.relative_to(tag_dir).as_posix(): h for p, h in hash_files(todo).items()})
    marker = {
        "id": uuid.uuid4().hex,  # tells this save from an older one under the same tag (the mirror)
        "tag": tag_dir.name,
        "iteration": iteration,
        "world_size": world_size,
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "files": {p.relative_to(tag_dir).as_posix(): p.stat().st_size for p in files},
        HASH: {p.relative_to(tag_dir).as_posix(): hashes[p.relative_to(tag_dir).as_posix()] for p in files},
    }
    tmp = tag_dir / f".{COMPLETE}.tmp"
    with open(tmp, "w") as f:
        json.dump(marker, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, tag_dir / COMPLETE)
    _fsync(tag_dir)
    return marker


def recorded_hashes(tag_dir: str | os.PathLike) -> dict[str, str] | None:
    """{relative path: sha256} from complete.json; None for a checkpoint written before content hashes
    (or before markers)."""
    try:
        return json.loads((Path(tag_dir) / COMPLETE).read_text()).get(HASH)
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_state(tag_dir: str | os.PathLike) -> tuple[str, str]:
    """(state, why) of a tag folder: complete, legacy (complete, pre-marker), incomplete, or foreign."""
    tag_dir = Path(tag_dir)
    marker = tag_dir / COMPLETE
    if marker.is_file():
        try:
            files = json.loads(marker.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            return "incomplete", f"{COMPLETE} is unreadable"
        for rel, size in files.items():
            p = tag_dir / rel
            if not p.is_file():
                return "incomplete", f"{rel}, listed in {COMPLETE}, is missing"
            if p.stat().st_size != size:
                return "incomplete", f"{rel} has {p.stat().st_size} bytes, {COMPLETE} says {size}"
        return "complete", ""
    config = tag_dir / MODEL_CONFIG
    if config.is_file():
        try:
            flagged = json.loads(config.read_text()).get("complete_marker", False)
        except (ValueError, AttributeError):
            return "incomplete", f"{MODEL_CONFIG} is unreadable"
        if flagged:
            return "incomplete", f"no {COMPLETE}: the run stopped while saving"
        if any(tag_dir.glob("*model_states.pt")):
            return "legacy", f"written before {COMPLETE} markers"
        return "incomplete", "no DeepSpeed model states"
    if (tag_dir / "layer_00-model_00-model_states.pt").exists():
        return "foreign", "a slim GPT-NeoX checkpoint"
    return "incomplete", f"no {COMPLETE}: the run stopped while saving"


def scan(save_dir: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """{tag: (state, why)} of the global_stepN folders (and the tag `latest` names) that are ours."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return {}
    tags = {d.name for d in save_dir.iterdir() if d.is_dir() and step_of(d.name) is not None}
    latest = latest_tag(save_dir)
    if latest and (save_dir / latest).is_dir():
        tags.add(latest)
    found = {t: checkpoint_state(save_dir / t) for t in tags}
    return {t: s for t, s in found.items() if s[0] != "foreign"}


def latest_tag(save_dir: str | os.PathLike) -> str | None:
    latest = Path(save_dir) / "latest"
    if not latest.is_file():
        return None
    return latest.read_text().strip() or None


def _order(tag: str) -> tuple[int, str]:
    step = step_of(tag)
    return (-1 if step is None else step, tag)


def choose_checkpoint(save_dir: str | os.PathLike | None) -> tuple[str | None, list[str]]:
    """(tag to resume from, lines for the log). The tag `latest` names if it is complete (DeepSpeed's
    convention; editing `latest` rolls back), else the newest complete one; newer incomplete
    folders are reported, one line each, and left as they are."""
    if not save_dir:
        return None, []
    found = scan(save_dir)
    complete = sorted((t for t, (state, _) in found.items() if state in COMPLETE_STATES), key=_order)
    latest = latest_tag(save_dir)
    if latest in complete:
        chosen = latest
    else:
        chosen = complete[-1] if complete else None
    notes = []
    for tag in sorted(found, key=_order):
        state, why = found[tag]
        if state == "incomplete" and (chosen is None or _order(tag) > _order(chosen)):
            named = ", the one 'latest' names" if tag == latest else ""
            notes.append(f"incomplete checkpoint {Path(save_dir) / tag}{named}, left as is ({why})")
    if latest and latest not in found and chosen:
        notes.append(f"'latest' names {latest}, which is not a checkpoint here; using {chosen}")
    return chosen, notes


def resume_candidates(train, log: Callable[[str], None]) -> Iterator[tuple[str, str, bool]]:
    """(folder, tag, module_only) of each complete checkpoint a run could continue from, in the order
    the run looks: `save` then `load` (with `finetune: true`, only `load`, weights only); the notes on
    incomplete ones are logged."""
    places = [(train.load, True)] if train.finetune else [(train.save, False), (train.load, False)]
    seen = set()
    for where, module_only in places:
        if not where or where in seen:
            continue
        seen.add(where)
        tag, notes = choose_checkpoint(where)
        for note in notes:
            log(f"note: {note}")
        if tag:
            yield where, tag, module_only


def older_complete(save_dir: str | os.PathLike, tag: str) -> list[str]:
    """The complete checkpoints older than `tag` in `save_dir`, newest first: where a resume falls back."""
    found = scan(save_dir)
    return sorted(
        (t for t, (state, _) in found.items() if state in COMPLETE_STATES and _order(t) < _order(tag)),
        key=_order,
        reverse=True,
    )


PROGRESS_FROM_BYTES = 1 << 30  # smaller checkpoints verify in seconds, without a progress line


def verify_checkpoint(tag_dir: str | os.PathLike, rank: int = 0, world: int = 1) -> str | None:
    """One phrase naming the first file whose content differs from its sha256 in complete.json, or None
    when all match. In a process group the files are shared out over the ranks (each hashes its share,
    several files at a time) and every rank gets the same answer."""
    tag_dir = Path(tag_dir)
    recorded = recorded_hashes(tag_dir) or {}
    mine = [tag_dir / rel for rel in sorted(recorded)[rank::world]]
    total = sum(p.stat().st_size for p in mine if p.is_file())
    progress = None
    if rank == 0 and total * world >= PROGRESS_FROM_BYTES:
        from jobs.cli import Progress, human_bytes

        progress = Progress(
            "trainer.checkpoint",
            lambda done, tot, rate, eta: (
                f"verifying {tag_dir.name}: {human_bytes(done)} / {human_bytes(tot)} at {human_bytes(rate)}/s"
            ),
            total=total,
        )
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            progress.advance(n)

    bad = None
    try:
        got = hash_files([p for p in mine if p.is_file()], advance if progress else None)
    finally:
        if progress:
            progress.close()
    for p in mine:
        rel = p.relative_to(tag_dir).as_posix()
        if p not in got:
            bad = (rel, f"{rel} is missing")
        elif got[p] != recorded[rel]:
            bad = (rel, f"{rel} does not match its {HASH} in {COMPLETE} (damaged since it was saved)")
        if bad:
            break
    if world > 1:
        import torch.distributed as dist

        every: list = [None] * world
        dist.all_gather_object(every, bad)
        bad = min((b for b in every if b), default=None)
    return bad[1] if bad else None


def intact_resume(
    resume: tuple[str, str, bool], log: Callable[[str], None], rank: int = 0, world: int = 1
) -> tuple[str, str, bool]:
    """The chosen checkpoint if its content matches complete.json, else the newest older complete one that
    does (one line per damaged one); refuses when none does. Checkpoints written before content hashes
    resume with a note that they were not content-verified."""
    where, tag, module_only = resume
    chain = [tag, *older_complete(where, tag)]
    for i, t in enumerate(chain):
        tag_dir = Path(where) / t
        if recorded_hashes(tag_dir) is None:
            log(f"note: checkpoint {tag_dir} predates content hashes in {COMPLETE}; not content-verified")
            return where, t, module_only
        damage = verify_checkpoint(tag_dir, rank, world)
        if damage is None:
            return where, t, module_only
        if i + 1 == len(chain):
            raise JobError(
                f"checkpoint {tag_dir}: {damage}; no older complete checkpoint in {where} to fall back to "
                f"(restore the file, or resume unchecked with trainer.train --no-verify / config key "
                f"'verify-checkpoints: false')"
            )
        log(f"warning: checkpoint {tag_dir}: {damage}; falling back to {chain[i + 1]}")
    raise AssertionError("unreachable")


def ds_checkpoint_tag(path: str | os.PathLike | None) -> str | None:
    """The tag of the complete checkpoint of ours to use at `path`, or None."""
    return choose_checkpoint(path)[0]


def set_aside(tag_dir: str | os.PathLike) -> Path:
    """Rename an existing folder that a new save needs the name of, never deleting it:
    global_step8 -> global_step8.incomplete-20260101T120000 (or .replaced-... if it was complete)."""
    import datetime

    tag_dir = Path(tag_dir)
    state = "replaced" if checkpoint_state(tag_dir)[0] in COMPLETE_STATES else "incomplete"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    target = tag_dir.with_name(f"{tag_dir.name}.{state}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = tag_dir.with_name(f"{tag_dir.name}.{state}-{stamp}-{n}")
    os.replace(tag_dir, target)
    return target


def stale_checkpoints(save_dir: Path, keep: int, busy: tuple[Path, ...] | set = ()) -> list[Path]:
    """Complete checkpoints beyond the newest `keep` complete ones. Incomplete folders neither count
    nor go; the newest complete one, the one `latest` names and `busy` ones (being mirrored) stay."""
    found = scan(save_dir)
    complete = sorted((t for t, (state, _) in found.items() if state in COMPLETE_STATES), key=_order)
    pinned = latest_tag(save_dir)
    busy = {Path(b) for b in busy}
    return [
        save_dir / t
        for t in complete[: max(0, len(complete) - keep)]
        if t != pinned and step_of(t) is not None and save_dir / t not in busy
    ]


def remove_checkpoint(tag_dir: Path) -> None:
    """Rename first, so a removal cut short leaves a folder named as such, not a damaged checkpoint."""
    doomed = tag_dir.with_name(f"{tag_dir.name}.removing")
    os.replace(tag_dir, doomed)
    shutil.rmtree(doomed)


def finish_removals(save_dir: Path) -> list[Path]:
    """Folders whose removal (keep-last-n-checkpoints) an earlier run started: finish it."""
    left = [d for d in Path(save_dir).glob("global_step*.removing") if d.is_dir()]
    for d in left:
        shutil.rmtree(d)
    return left
