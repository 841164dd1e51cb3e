"""Time the deploy tooling's own work: render + strict validation of the example config, the dry-run
write, and a full deploy (apply, wait, submit) plus an idempotent second run against the local
stand-ins of tests/support/kube.py (over TLS, through the official client). Usage:
python benchmarks/deploy_bench.py [REPEATS]"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from k8s import deploy as d  # noqa: E402
from k8s.cluster import Cluster, default_credentials  # noqa: E402
from k8s.config import load_config, load_lock  # noqa: E402
from k8s.determined_api import Master  # noqa: E402
from k8s.plan import build_plan, write_plan  # noqa: E402
from tests.support import kube as standins  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main(repeats: int = 5) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
    lock = tmp / "images.lock.json"
    lock.write_text(
        json.dumps(
            {
                "images": {
                    n: f"127.0.0.1:5999/neox/{n}@sha256:{c * 64}"
                    for n, c in (("trainer", "1"), ("fetcher", "2"), ("preprocessor", "3"))
                }
            }
        )
    )
    import yaml

    raw = yaml.safe_load((REPO / "pipeline.example.yaml").read_text())
    raw["neox_configs"] = [str(REPO / "configs" / "determined-cluster.yml")]
    raw["experiment_base"] = str(REPO / "configs" / "finetune-gpt-neox.yml")
    raw["lock_file"] = str(lock)
    cfg_path = tmp / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg, images = load_config(cfg_path), load_lock(lock)
    t = time.perf_counter()
    build_plan(cfg, images)  # cold: loads the Kubernetes and Determined schemas
    print(f"render+validate, cold (schemas loaded): {(time.perf_counter() - t) * 1000:.0f} ms")
    med, best = timed(lambda: build_plan(cfg, images), repeats)
    print(
        f"render+validate, warm (7 objects + experiment): median {med * 1000:.0f} ms, best {best * 1000:.0f} ms"
    )
    plan = build_plan(cfg, images)
    outs = iter(range(repeats))  # a new folder each time: --out never replaces one with files in it
    med, best = timed(lambda: write_plan(plan, tmp / f"out{next(outs)}", images), repeats)
    print(f"dry-run write: median {med * 1000:.0f} ms, best {best * 1000:.0f} ms")
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "AKIDBENCH",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "DET_PASS": "det-pass-123",
        }
    )

    pki = standins.make_pki(tmp / "pki")

    def full():
        kube = standins.FakeKube(tls=pki).start()
        det = standins.FakeDetermined().start()
        try:
            kubeconfig = standins.write_kubeconfig(tmp / "kubeconfig", kube.url, kube.ca_file, kube.token)
            cluster = Cluster(default_credentials(str(kubeconfig)), raw["namespace"])
            master = Master(det.url)
            opts = d.Options(config=str(cfg_path), skip_preflight=True, poll=0.01)
            d.secrets(opts, cluster=cluster, out=io.StringIO())
            t = time.perf_counter()
            d.deploy(opts, cluster=cluster, master=master, out=io.StringIO())
            first = time.perf_counter() - t
            t = time.perf_counter()
            d.deploy(opts, cluster=cluster, master=master, out=io.StringIO())
            return first, time.perf_counter() - t, len(kube.requests)
        finally:
            kube.stop()
            det.stop()

    runs = [full() for _ in range(repeats)]
    print(
        f"deploy vs stand-ins: first run median {statistics.median(r[0] for r in runs) * 1000:.0f} ms, "
        f"second (no-op) run median {statistics.median(r[1] for r in runs) * 1000:.0f} ms, "
        f"{runs[0][2]} API requests for both"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
