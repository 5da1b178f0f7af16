"""Benchmark: multi-task inference latency, one SubTuning multi-task model against separate models.

    python bench/latency.py                                  # the paper's protocol: resnet50, 224, all depths
    python bench/latency.py --device cpu --threads 1 --warmup 3 --runs 10 --repeats 3 \\
        --depths 0 3 7 13 15 2-3 6-7 13-14                   # a shorter run on a small CPU
    python bench/latency.py --tasks 1..4 --with-base --out bench/work/latency-base

The SubTuning paper's deployment claim (Kaplun et al., arXiv 2302.06354,
Figure 7): tasks SubTuned from one backbone share its frozen part, so serving
k of them costs far less than k networks. For each tuned-block setting
(``--depths``: a block index, 0-based in network order as ``subtune blocks``
lists them, or a consecutive range ``i-j``; the default is every single
block and every consecutive pair, the paper's sets) and each task count
k in ``--tasks``, k tasks each tune those blocks (their own random weights,
their own 100-class head) and two deployments are timed on one image
(batch 1):

- *multi-task*: one :class:`subtune.multitask.MultiTaskModel` (frozen prefix
  once, the k tuned copies, then the k branches stacked along the batch
  dimension through the shared frozen blocks);
- *separate*: k separate networks run one after another. Their cost does not
  depend on which blocks are tuned (same architecture), so it is timed once
  per k (with the first setting's weights).

``--with-base`` adds the pretrained model's own task (frozen features, its
own head) to both deployments, the paper's setting of a new task deployed
next to the original model: then the frozen path goes on after the tuned
block (stacked with the branches) instead of ending there.

Protocol (the paper's defaults): randomly initialised timm weights (no hub;
latency does not depend on their values), eval mode, ``torch.inference_mode``;
every repeat runs ``--warmup`` untimed calls then ``--runs`` timed calls of
each configuration (configurations interleaved within a repeat, so that
drifting machine load hits them alike); a repeat's time is the mean per call;
the reported number is the median over ``--repeats``. On CUDA each call is
synchronised (a request's latency). Before timing, each multi-task model's
logits are checked against its separate models'.

Output: a markdown table of median ms (rows: tuned blocks; columns: task
count; the last row the separate models), printed and written with a CSV (every
repeat) and a PNG plot (latency against tuned blocks, one line per task count,
separate models dashed; single blocks and pairs side by side) under ``--out``
(default ``bench/work/latency-DEVICE``).
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from subtune.models.blocks import block_names  # noqa: E402
from subtune.models.checkpoint import create  # noqa: E402
from subtune.multitask import MultiTaskModel, TaskResult  # noqa: E402

NUM_CLASSES = 100


def parse_tasks(tokens: list[str]) -> list[int]:
    out: list[int] = []
    for t in tokens:
        if ".." in t:
            a, b = t.split("..")
            out += range(int(a), int(b) + 1)
        else:
            out.append(int(t))
    if not out or min(out) < 1:
        raise SystemExit(f"--tasks: need task counts >= 1, got {tokens}")
    return list(dict.fromkeys(out))


def parse_depths(tokens: list[str] | None, n: int) -> list[tuple[int, ...]]:
    if not tokens:
        return [(i,) for i in range(n)] + [(i, i + 1) for i in range(n - 1)]
    out = []
    for t in tokens:
        a, _, b = t.partition("-")
        lo, hi = int(a), int(b or a)
        if not 0 <= lo <= hi < n:
            raise SystemExit(f"--depths: {t!r} is outside blocks 0..{n - 1}")
        out.append(tuple(range(lo, hi + 1)))
    return out


def task_state(base: torch.nn.Module, blocks: list[str], seed: int) -> dict[str, torch.Tensor]:
    """A stand-in SubTuning result: the tuned blocks' weights slightly changed, a new head."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for b in blocks:
        for k, v in base.get_submodule(b).state_dict().items():
            if v.is_floating_point() and "running_var" not in k:
                v = v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype)
            state[f"{b}.{k}"] = v.clone()
    clf = base.pretrained_cfg.get("classifier", "fc")
    width = base.get_submodule(clf).in_features
    state[f"{clf}.weight"] = 0.01 * torch.randn(NUM_CLASSES, width, generator=g)
    state[f"{clf}.bias"] = torch.zeros(NUM_CLASSES)
    return state


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--tasks", nargs="+", default=["1..4"], help="task counts: integers or ranges a..b")
    ap.add_argument("--depths", nargs="+", help="tuned blocks: index or consecutive range i-j (default: all singles and pairs)")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--with-base", action="store_true", help="also serve the pretrained model's own task")
    ap.add_argument("--out", help="output folder (default bench/work/latency-DEVICE)")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    ks = parse_tasks(a.tasks)
    torch.manual_seed(0)
    base = create(a.arch, 1000).eval()
    names = block_names(base)
    depths = parse_depths(a.depths, len(names))
    out = Path(a.out or ROOT / f"bench/work/latency-{dev.type}")
    out.mkdir(parents=True, exist_ok=True)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    x = torch.randn(1, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(1))
    x = x.to(dev).contiguous(memory_format=fmt)
    base_task = TaskResult({k: v.clone() for k, v in base.state_dict().items()}, [], "base")

    def label(d: tuple[int, ...]) -> str:
        return "+".join(names[i] for i in d)

    kmax = max(ks)
    all_results = [[TaskResult(task_state(base, [names[i] for i in d], seed=100 * di + t), [names[i] for i in d],
                               f"t{t}") for t in range(kmax)] for di, d in enumerate(depths)]
    base.to(dev, memory_format=fmt)
    # configurations: ("multi", tuned blocks, k) and ("separate", "-", k)
    configs: dict[tuple, object] = {}
    for di, (d, results) in enumerate(zip(depths, all_results)):
        for k in ks:
            tasks = ([base_task] if a.with_base else []) + results[:k]
            mt = MultiTaskModel(base, tasks).to(dev, memory_format=fmt)
            configs[("multi", label(d), k)] = mt
            if di == 0:
                seps = [t.model(base).to(dev, memory_format=fmt) for t in tasks]
                configs[("separate", "-", k)] = seps
            with torch.inference_mode():  # the multi-task model computes what the separate models compute
                got = mt(x)
                for t in tasks:
                    want = t.model(base).to(dev, memory_format=fmt)(x)
                    err = (got[t.name] - want).abs().max().item()
                    tol = 1e-3 * max(1.0, want.abs().max().item())
                    if err > tol:
                        raise SystemExit(f"{label(d)} k={k} {t.name}: multi-task logits differ by {err:.2e}")

    def call(obj) -> None:
        if isinstance(obj, list):
            for m in obj:
                m(x)
        else:
            obj(x)
        sync(dev)

    what = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{a.arch} {a.image_size}x{a.image_size}, batch 1, {dev.type} ({what}), torch {torch.__version__}; "
          f"{a.warmup} warm-up + {a.runs} timed runs, {a.repeats} repeats, median"
          + ("; with the base task" if a.with_base else ""), flush=True)
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for r in range(a.repeats):
            for c, obj in configs.items():
                for _ in range(a.warmup):
                    call(obj)
                start = time.perf_counter()
                for _ in range(a.runs):
                    call(obj)
                times[c].append((time.perf_counter() - start) / a.runs * 1000)
            print(f"  repeat {r + 1}/{a.repeats} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    med = {c: statistics.median(v) for c, v in times.items()}

    with open(out / "latency.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["deployment", "tuned_blocks", "tasks", "with_base", "median_ms"]
                   + [f"repeat{i + 1}_ms" for i in range(a.repeats)])
        for c, v in times.items():
            w.writerow([*c, int(a.with_base), f"{med[c]:.3f}", *(f"{t:.3f}" for t in v)])

    head = "| tuned blocks | " + " | ".join(f"{k} task{'s' if k > 1 else ''}" for k in ks) + " |"
    lines = [head, "|" + " --- |" * (len(ks) + 1)]
    for d in depths:
        lines.append(f"| {label(d)} | " + " | ".join(f"{med[('multi', label(d), k)]:.1f}" for k in ks) + " |")
    lines.append("| separate models | " + " | ".join(f"{med[('separate', '-', k)]:.1f}" for k in ks) + " |")
    table = "\n".join(lines)
    print(f"\nmedian latency (ms), multi-task model vs separate models:\n\n{table}\n")
    (out / "latency.md").write_text(table + "\n")
    plot(depths, ks, med, label, out / "latency.png",
         f"{a.arch}, batch 1, {dev.type}" + (" (with base task)" if a.with_base else ""))
    print(f"wrote {out / 'latency.csv'}, {out / 'latency.md'}, {out / 'latency.png'}")


def plot(depths, ks, med, label, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(n, [d for d in depths if len(d) == n]) for n in sorted({len(d) for d in depths})]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False, sharey=True)
    for ax, (n, ds) in zip(axes[0], groups):
        xs = range(len(ds))
        for j, k in enumerate(ks):
            color = f"C{j}"
            ax.plot(xs, [med[("multi", label(d), k)] for d in ds], "o-", color=color, label=f"multi-task, {k}")
            ax.axhline(med[("separate", "-", k)], color=color, ls="--", lw=1, label=f"separate, {k}")
        ax.set_xticks(list(xs), [label(d) for d in ds], rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("tuned block" if n == 1 else f"tuned blocks ({n} consecutive)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("latency (ms, median)")
    axes[0][-1].legend(fontsize=7, title="deployment, tasks", title_fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
