"""`invoke local`: the whole pipeline on one machine with the local Docker engine.

The three images run as they would on a cluster, a host folder (`--workdir`) standing in for the
shared volume:

  sample      a generated corpus and a tokenizer trained on it (unless --corpus/--tokenizer)
  weights     a randomly initialised tiny GPT-NeoX in Hugging Face format (unless --weights)
  fetch       the fetcher downloads those weights over HTTP from a server container it starts
  preprocess  the preprocessor tokenizes the corpus into the indexed dataset
  train       the trainer fine-tunes (CPU, or GPU when the engine has one); checkpoints are then
              stored in a local S3-compatible server (moto) as Determined's checkpoint storage would.
              With --nodes N it runs as N trainer containers through `trainer.launch`, with the
              environment the JobSet backend renders (master 127.0.0.1, host networking)
  export      the checkpoint comes back from S3 and is written as a Hugging Face folder
  generate    a few tokens from the exported model

Each stage records a fingerprint of its inputs (and of the stages before it) in
`WORKDIR/state.json` only after it succeeded; a re-run skips stages whose fingerprint is
unchanged, so nothing from a failed stage is taken as done. `--clean` starts over.

The fetch, preprocess, train and export command lines come from jobs/spec.py, as the cluster's do.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jobs import spec as js
from jobs.cli import write_json_atomic
from local.containers import MOUNT, Runner, StageError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "local" / "neox-tiny.yml"
LORA_CONFIG = ROOT / "local" / "lora-tiny.yml"  # added to the configs for the LoRA run
BUCKET = "neox-checkpoints"
PROMPT = "The red fox"


@dataclass
class LocalOptions:
    workdir: Path = ROOT / "out" / "local"
    weights: str | None = None  # a fetcher SOURCE; default: tiny random weights served over HTTP
    corpus: list[str] = field(default_factory=list)  # preprocessor inputs (paths under workdir or URLs)
    tokenizer: str | None = None  # needed with --corpus
    configs: list[Path] = field(default_factory=lambda: [DEFAULT_CONFIG])
    train_iters: int | None = None
    clean: bool = False
    gpus: bool | None = None  # None: use a GPU when the engine has the NVIDIA runtime
    nodes: int = 1  # trainer containers, one process each: the multi-node path on one machine
    lora: bool = True  # also fine-tune with LoRA adapters from the same weights (a second train stage)


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_volume(workdir: Path, path: Path) -> str:
    return f"{MOUNT}/{path.relative_to(workdir).as_posix()}"


class LocalPipeline:
    def __init__(
        self, opts: LocalOptions, images: dict[str, str], client, log: Callable[[str], None] = print
    ):
        self.opts = opts
        self.images = images
        self.log = log
        self.workdir = opts.workdir.resolve()
        gpus = opts.gpus if opts.gpus is not None else "nvidia" in (client.info().get("Runtimes") or {})
        self.runner = Runner(client, self.workdir, log=log, gpus=gpus)
        self.state_file = self.workdir / "state.json"
        self.timings: dict[str, dict] = {}

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def _stage(
        self, name: str, fingerprint: str, outputs: list[Path], body: Callable[[], dict | None]
    ) -> dict:
        """Run `body` unless a previous success with the same fingerprint left its outputs."""
        done = self._state().get(name)
        if done and done["fingerprint"] == fingerprint and all(p.exists() for p in outputs):
            self.log(f"== {name}: unchanged, reused ({done['seconds']:.1f}s when it ran)")
            self.timings[name] = {**done, "reused": True}
            return done
        self.log(f"== {name}")
        start = time.monotonic()
        info = body() or {}
        record = {"fingerprint": fingerprint, "seconds": round(time.monotonic() - start, 1), **info}
        state = self._state()
        state[name] = record
        write_json_atomic(self.state_file, state)
        self.timings[name] = {**record, "reused": False}
        self.log(f"== {name}: done in {record['seconds']:.1f}s")
        return record

    # ---- the stages ------------------------------------------------------------------------------

    def run(self) -> dict:
        if self.opts.clean and self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.runner.prepare_volume()
        configs = self._copy_configs()
        tokenizer, corpus, fp = self._sample()
        weights_source, fp = self._weights(configs, tokenizer, fp)
        weights, fp_fetch = self._fetch(weights_source, fp)
        data_prefix, fp_data = self._preprocess(corpus, tokenizer, fp)
        inputs = _fingerprint(fp_fetch, fp_data)
        train = self._train(configs, tokenizer, weights, data_prefix, inputs)
        export = self._export(train)
        generated = self._generate(export["hf"], tokenizer, export["fingerprint"])
        lora = None
        if self.opts.lora:
            lora_configs = [*configs, self._copy_config(LORA_CONFIG)]
            lora = self._train(lora_configs, tokenizer, weights, data_prefix, inputs, stage="train-lora")
            lora["adapter"] = self._export_adapter(lora)
        return self._summary(train, export, generated, lora)

    def _copy_config(self, cfg: Path) -> Path:
        copy = self.workdir / "configs" / cfg.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(cfg, copy)
        return copy

    def _copy_configs(self) -> list[Path]:
        folder = self.workdir / "configs"
        folder.mkdir(exist_ok=True)
        copies = []
        for cfg in self.opts.configs:
            if not Path(cfg).is_file():
                raise StageError(f"NeoX config {cfg} not found")
            copy = folder / Path(cfg).name
            shutil.copyfile(cfg, copy)
            copies.append(copy)
        return copies

    def _sample(self) -> tuple[Path, list[str], str]:
        """The corpus and tokenizer: the user's (copied into the volume) or a generated sample."""
        if self.opts.corpus:
            if not self.opts.tokenizer:
                raise StageError("--corpus needs --tokenizer (a tokenizer.json)")
            tokenizer = self._into_volume(Path(self.opts.tokenizer), "tokenizer")
            corpus = [
                _in_volume(self.workdir, self._into_volume(Path(c), "corpus")) if Path(c).exists() else c
                for c in self.opts.corpus
            ]
            return tokenizer, corpus, _fingerprint(corpus, tokenizer.read_bytes())
        out = self.workdir / "sample"

        def make_sample() -> None:
            args = ["-m", "jobs.sample", "--out", _in_volume(self.workdir, out)]
            self.runner.run("sample", self.images["preprocessor"], args, entrypoint=["python"])

        fp = _fingerprint("sample", "default")
        self._stage("sample", fp, [out / "corpus.jsonl", out / "tokenizer.json"], make_sample)
        return out / "tokenizer.json", [_in_volume(self.workdir, out / "corpus.jsonl")], fp

    def _into_volume(self, path: Path, folder: str) -> Path:
        """Copy a host file or folder into the shared volume so the containers see it."""
        if not path.exists():
            raise StageError(f"{path} not found")
        target = self.workdir / folder / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(path, target)
        return target

    def _weights(self, configs: list[Path], tokenizer: Path, fp: str) -> tuple[Path | str, str]:
        if self.opts.weights:
            return self.opts.weights, _fingerprint(self.opts.weights)
        out = self.workdir / "source" / "tiny-neox"

        def init_weights() -> None:
            args = [
                "-m",
                "trainer.init_weights",
                "--out",
                _in_volume(self.workdir, out),
                "--config",
                *[_in_volume(self.workdir, c) for c in configs],
                "--override",
                f"vocab-file={_in_volume(self.workdir, tokenizer)}",
            ]
            self.runner.run("weights", self.images["trainer"], args, entrypoint=["python"])

        fp = _fingerprint("weights", [c.read_text() for c in configs], fp)
        self._stage("weights", fp, [out / "config.json"], init_weights)
        return out, fp

    def _fetch(self, source: Path | str, fp: str) -> tuple[Path, str]:
        dest = self.workdir / "weights" / "model"
        fp = _fingerprint("fetch", str(source), fp)

        def body() -> dict:
            if isinstance(source, Path):  # our own weights: serve them over HTTP so the real path runs
                port = _free_port()
                server = self.runner.serve(self.images["fetcher"], source.parent, port)
                try:
                    _wait_for_port(port)
                    url = f"http://127.0.0.1:{port}/{source.name}/"
                    logs = self._run("fetch", js.FETCHER, js.fetch_args(url, _in_volume(self.workdir, dest)))
                finally:
                    server.remove(force=True)
            else:
                logs = self._run("fetch", js.FETCHER, js.fetch_args(source, _in_volume(self.workdir, dest)))
            return {"summary": _last_line(logs)}

        self._stage("fetch", fp, [dest / "fetch-manifest.json"], body)
        return dest, fp

    def _preprocess(self, corpus: list[str], tokenizer: Path, fp: str) -> tuple[Path, str]:
        prefix = self.workdir / "data" / "corpus"
        fp = _fingerprint("preprocess", corpus, fp)

        def body() -> dict:
            args = js.preprocess_args(
                corpus, _in_volume(self.workdir, tokenizer), _in_volume(self.workdir, prefix)
            )
            return {"summary": _last_line(self._run("preprocess", js.PREPROCESSOR, args))}

        out = Path(f"{prefix}_text_document")
        self._stage("preprocess", fp, [out.with_suffix(".bin"), out.with_suffix(".idx")], body)
        return out, fp

    def _train(
        self, configs: list[Path], tokenizer: Path, weights: Path, data: Path, fp: str, stage: str = "train"
    ) -> dict:
        """A fine-tuning run; stage `train-lora` is the same run with LoRA adapters (configs end with
        LORA_CONFIG), into its own checkpoint and log folders."""
        suffix = stage.removeprefix("train")
        save = self.workdir / f"checkpoints{suffix}"
        logs_dir = self.workdir / f"train-logs{suffix}"
        vol = self.workdir
        overrides: dict[str, object] = js.train_paths(
            tokenizer=_in_volume(vol, tokenizer),
            data_path=_in_volume(vol, data),
            load=_in_volume(vol, weights),
            save=_in_volume(vol, save),
            log_dir=_in_volume(vol, logs_dir),
            tensorboard_dir=_in_volume(vol, vol / f"tensorboard{suffix}"),
        )
        if self.opts.train_iters:
            overrides["train-iters"] = str(self.opts.train_iters)
        nodes = self.opts.nodes
        spec = js.JobSpec(
            stage,
            js.TRAINER,
            js.train_args([_in_volume(vol, c) for c in configs], overrides),
            command=js.LAUNCH if nodes > 1 else ("python", "-m", "trainer.train"),
            nodes=nodes,
        )
        fp = _fingerprint(stage, [c.read_text() for c in configs], overrides, nodes, fp)

        def body() -> dict:
            shutil.rmtree(save, ignore_errors=True)  # a changed run starts from the fetched weights
            shutil.rmtree(logs_dir, ignore_errors=True)
            self.runner.prepare_volume()
            self.runner.run_spec(spec, self.images, port=_free_port() if nodes > 1 else None)
            stats = json.loads((logs_dir / "train-stats.json").read_text())
            return {"train_stats": stats}

        record = self._stage(stage, fp, [save / "latest", logs_dir / "metrics.jsonl"], body)
        return {**record, "save": save, "metrics": logs_dir / "metrics.jsonl"}

    def _export(self, train: dict) -> dict:
        out = self.workdir / "export"
        hf = out / "hf"
        fp = _fingerprint("export", train["fingerprint"])

        def body() -> dict:
            from local.s3 import LocalS3

            with LocalS3() as s3:
                s3.create_bucket(BUCKET)
                uploaded = s3.upload_folder(train["save"], BUCKET, "local/checkpoints")
                self.log(
                    f"[export] stored {uploaded} checkpoint files in s3://{BUCKET}/local/checkpoints ({s3.endpoint})"
                )
                shutil.rmtree(out, ignore_errors=True)
                s3.download_folder(BUCKET, "local/checkpoints", out / "checkpoint")
            self.runner.prepare_volume()
            args = js.export_args(_in_volume(self.workdir, out / "checkpoint"), _in_volume(self.workdir, hf))
            self._run("export", js.TRAINER, args, command=("python",))
            return {"s3_files": uploaded}

        record = self._stage("export", fp, [hf / "config.json"], body)
        return {**record, "hf": hf}

    def _generate(self, hf: Path, tokenizer: Path, fp: str) -> str:
        def generate() -> dict:
            args = [
                "-m",
                "trainer.generate",
                "--model",
                _in_volume(self.workdir, hf),
                "--tokenizer",
                _in_volume(self.workdir, tokenizer),
                "--prompt",
                PROMPT,
                "--max-new-tokens",
                "24",
            ]
            logs = self.runner.run("generate", self.images["trainer"], args, entrypoint=["python"])
            return {"text": _last_line(logs).split(" -> ", 1)[-1]}

        return self._stage("generate", _fingerprint("generate", PROMPT, fp), [], generate)["text"]

    def _export_adapter(self, lora: dict) -> Path:
        """The LoRA run's adapters as a PEFT folder (adapter_config.json + adapter_model.safetensors)."""
        out = self.workdir / "export" / "lora-adapter"

        def body() -> None:
            shutil.rmtree(out, ignore_errors=True)  # ours: rewritten whenever the LoRA run changed
            self.runner.prepare_volume()
            args = js.export_args(_in_volume(self.workdir, lora["save"]), _in_volume(self.workdir, out))
            self._run("export-lora", js.TRAINER, args, command=("python",))

        self._stage(
            "export-lora",
            _fingerprint("export-lora", lora["fingerprint"]),
            [out / "adapter_config.json"],
            body,
        )
        return out

    def _run(
        self, stage: str, image: str, args: tuple[str, ...], command: tuple[str, ...] | None = None
    ) -> str:
        return self.runner.run_spec(js.JobSpec(stage, image, args, command=command), self.images)

    def _summary(self, train: dict, export: dict, generated: str, lora: dict | None = None) -> dict:
        from local.report import loss_curve

        metrics = _read_metrics(train["metrics"])
        losses = [m for m in metrics if m.get("kind") == "train"]
        runs = {"full fine-tune": metrics}
        if lora:
            runs["LoRA"] = _read_metrics(lora["metrics"])
        png = loss_curve(runs, self.workdir / "loss.png")
        summary = {
            "stages": {k: {"seconds": v["seconds"], "reused": v["reused"]} for k, v in self.timings.items()},
            "first_loss": losses[0]["lm_loss"] if losses else None,
            "final_loss": losses[-1]["lm_loss"] if losses else None,
            "iterations": train.get("train_stats", {}).get("iterations"),
            "checkpoints": str(train["save"]),
            "bucket": BUCKET,
            "hf_model": str(export["hf"]),
            "loss_curve": str(png),
            "generated": generated,
        }
        if lora:
            lora_losses = [m for m in runs["LoRA"] if m.get("kind") == "train"]
            summary["lora"] = {
                "first_loss": lora_losses[0]["lm_loss"] if lora_losses else None,
                "final_loss": lora_losses[-1]["lm_loss"] if lora_losses else None,
                "checkpoints": str(lora["save"]),
                "adapter": str(lora["adapter"]),
            }
        write_json_atomic(self.workdir / "summary.json", summary)
        return summary


def _read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _last_line(logs: str) -> str:
    """A job's summary line: the last thing it printed."""
    lines = logs.strip().splitlines()
    return lines[-1] if lines else ""


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise StageError(f"the weights server on 127.0.0.1:{port} did not start")
