"""The loss-curve picture `invoke local` leaves beside its outputs."""

from __future__ import annotations

from pathlib import Path


def loss_curve(runs: dict[str, list[dict]] | list[dict], out: Path) -> Path:
    """One picture of every run's train and validation loss (`runs`: label -> metrics.jsonl lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(runs, list):
        runs = {"": runs}
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, (label, metrics) in enumerate(runs.items()):
        color = f"C{i}"
        for kind, style in (("train", "-"), ("valid", "o--")):
            points = [
                (m["iteration"], m["lm_loss"]) for m in metrics if m.get("kind") == kind and "lm_loss" in m
            ]
            if points:
                name = f"{label} {kind} lm_loss".strip()
                ax.plot(*zip(*points, strict=True), style, color=color, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("lm_loss")
    ax.set_title("invoke local: fine-tuning loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
