"""Benchmark: one full greedy selection, the naive way and the optimized way.

    python bench/selection.py                      # the embedded default: fmnist, seed 0
    python bench/selection.py --target digits --seed 1 --root bench/work/pipeline   # a finished run's inputs
    python bench/selection.py --arch resnet50 --image-size 224 --gpu-throughput   # on a GPU machine

Naive (the SubTuning paper's procedure): every candidate is a separate
fine-tune of the whole network (full forward each step, one candidate after
another), here in one process so that start-up is not counted against it.
Optimized (the workflow's default): frozen-prefix caching plus candidates
trained together (:mod:`subtune.scoring`). Both run the same greedy rounds
(:func:`subtune.select.greedy`) with the same seeds. Also timed: one plain
full fine-tune (FT of the whole network, same epochs), the unit a user thinks
in, and the start-up a separate job pays (python, torch, timm, data and
checkpoint loading), which a per-candidate job would add to the naive way.

Inputs: the prepared target and the checkpoint of the embedded default
(built with Snakemake if missing), or with ``--arch`` a randomly initialised
timm model of that architecture at ``--image-size`` (no hub needed) on the
target prepared at that size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from subtune.config import dataset_params, selection_train  # noqa: E402
from subtune.data.prepared import load_manifest, load_prepared  # noqa: E402
from subtune.methods import get_method  # noqa: E402
from subtune.models.blocks import block_names  # noqa: E402
from subtune.models.checkpoint import Checkpoint, build_model, create, save_checkpoint  # noqa: E402
from subtune.prefix import PrefixCache  # noqa: E402
from subtune.scoring import CandidateScorer  # noqa: E402
from subtune.select import SelectionConfig, greedy  # noqa: E402
from subtune.train import Preprocess, TrainConfig, fit, pick_device  # noqa: E402


def prepare_inputs(a, cfg) -> tuple[Path, Path, Path]:
    exp = cfg["experiment"]
    if a.arch is None:
        root = Path(a.root)
        data = root / f"data/prepared/{exp}/{a.target}/1k.safetensors"
        ckpt = root / f"checkpoints/{exp}/backbone.safetensors"
        missing = [str(p.relative_to(root)) for p in (data, ckpt) if not p.exists()]
        if missing:
            print(f"building {', '.join(missing)} with snakemake ...", flush=True)
            subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--cores", "all", *missing],
                           cwd=root, check=True)
        return data, data.with_suffix(".json"), ckpt
    out = ROOT / "bench/work"
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{a.target}_{a.image_size}.safetensors"
    if not data.exists():
        raw = ROOT / "data/raw/fashion-mnist"
        params = {**dataset_params(cfg, a.target), "image_size": a.image_size}
        subprocess.run([sys.executable, "-m", "subtune", "download", "--dataset", "fashion-mnist", "--out", str(raw)],
                       check=True, cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})
        subprocess.run([sys.executable, "-m", "subtune", "prepare", "--target", a.target, "--raw", str(raw),
                        "--params", json.dumps(params), "--out", str(data), "--manifest",
                        str(data.with_suffix(".json"))], check=True, cwd=ROOT,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})
    ckpt = out / f"{a.arch}_random.safetensors"
    if not ckpt.exists():
        torch.manual_seed(0)
        model = create(a.arch, 1000)
        save_checkpoint(ckpt, model, Checkpoint(a.arch, 1000, image_size=a.image_size,
                                                origin={"kind": "random-init (benchmark)"}))
    return data, data.with_suffix(".json"), ckpt


CPU: dict[str, float] = {}  # CPU seconds of the last timed call (on a shared machine, steadier than wall time)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    CPU["last"] = time.process_time() - c
    return out, time.perf_counter() - t


def gpu_throughput(ckpt: Path, data: dict, num_classes: int, cfg: TrainConfig, steps: int = 30) -> None:
    """Images/s of full fine-tuning with and without bf16 autocast and channels_last."""
    dev = torch.device("cuda")
    x = data["train_x"][: cfg.batch_size].to(dev)
    y = data["train_y"][: cfg.batch_size].to(dev)
    for amp in (False, True):
        for cl in (False, True):
            model, ck = build_model(ckpt, num_classes)
            model.to(dev).train()
            if cl:
                model.to(memory_format=torch.channels_last)
            pre = Preprocess(ck.mean, ck.std, ck.in_chans).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)

            def step():
                xb = pre(x)
                if cl:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    loss = torch.nn.functional.cross_entropy(model(xb).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(5):
                step()
            _, dt = timed(lambda: [step() for _ in range(steps)])
            print(f"  full FT, batch {cfg.batch_size}: bf16 autocast {'on ' if amp else 'off'}, channels_last "
                  f"{'on ' if cl else 'off'}: {steps * cfg.batch_size / dt:8.0f} images/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--target", default="fmnist")
    ap.add_argument("--root", default=str(ROOT), help="where the default's checkpoints/ and data/ are")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1: CPU-time ratios are comparable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", help="benchmark a randomly initialised timm model instead of the default checkpoint")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, help="override the selection epochs")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--gpu-throughput", action="store_true", help="also measure FT images/s (CUDA only)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-jobs", action="store_true", help="skip the one-job-per-candidate naive run")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = yaml.safe_load(Path(a.config).read_text())
    data_path, manifest_path, ckpt = prepare_inputs(a, cfg)
    manifest = load_manifest(manifest_path)
    k = int(manifest["num_classes"])
    train_cfg = TrainConfig.from_dict(selection_train(cfg))
    if a.epochs:
        train_cfg.epochs = a.epochs
    if a.batch_size:
        train_cfg.batch_size = a.batch_size
    sel_keys = ("strategy", "stop_rule", "k", "epsilon", "scoring", "folds")
    sel = SelectionConfig(**{kk: v for kk, v in cfg["selection"].items() if kk in sel_keys})
    data = load_prepared(data_path, splits=("train", "val"))
    dev = pick_device()
    print(f"device: {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'})")
    print(f"target {a.target} ({len(data['train_y'])} train / {len(data['val_y'])} val images, "
          f"{manifest['image_size']}px), checkpoint {ckpt.name}, seed {a.seed}")
    print(f"selection: {sel.strategy}, stop rule {sel.stop_rule}, k={sel.k}, epsilon={sel.epsilon}, "
          f"scoring {sel.scoring}; {train_cfg.epochs} epochs, batch {train_cfg.batch_size}")

    if a.gpu_throughput and dev.type == "cuda":
        gpu_throughput(ckpt, data, k, train_cfg)

    model, ck = build_model(ckpt, k, seed=a.seed)
    blocks = block_names(model)
    pre = Preprocess(ck.mean, ck.std, ck.in_chans)
    ft = get_method("ft").trainable(model)
    _, t_ft = timed(lambda: fit(model, ft, pre, (data["train_x"], data["train_y"]),
                                {"val": (data["val_x"], data["val_y"])}, train_cfg, a.seed))
    c_ft = CPU["last"]
    print(f"one plain full fine-tune ({train_cfg.epochs} epochs, in process): {t_ft:.1f} s ({c_ft:.1f} s CPU)")
    if dev.type == "cpu":
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, timm, safetensors"], check=True)
        print(f"start-up of a separate job (python + torch + timm import): {time.perf_counter() - t:.1f} s")

    def run(fast: bool):
        scorer = CandidateScorer(str(ckpt), data, k, train_cfg, sel, a.seed, fast=fast,
                                 cache=PrefixCache(memory_mb=8192), data_digest=manifest.get("sha256"))
        rounds = []  # (candidates, seconds) per round

        def counting(sets):
            out, dt = timed(lambda: scorer(sets))
            rounds.append((len(sets), dt))
            return out

        state, dt = timed(lambda: greedy(blocks, counting, sel))
        cpu = CPU["last"]
        print(f"  {'optimized' if fast else 'naive'} rounds: "
              + "; ".join(f"{c} candidates {s:.1f} s = {s / t_ft:.2f} FT" for c, s in rounds))
        return state, dt, sum(c for c, _ in rounds), cpu

    opt_state, t_opt, n_opt, c_opt = run(True)
    print(f"optimized greedy selection: {t_opt:.1f} s ({c_opt:.1f} s CPU) for {n_opt} candidates in "
          f"{len(opt_state['rounds'])} rounds -> {opt_state['selected']} (val {opt_state['score']:.4f}); "
          f"{t_opt / t_ft:.2f} plain fine-tunes ({c_opt / c_ft:.2f} by CPU time)")
    if a.skip_naive:
        return
    naive_state, t_naive, n_naive, c_naive = run(False)
    print(f"naive greedy selection:     {t_naive:.1f} s ({c_naive:.1f} s CPU) for {n_naive} candidates -> "
          f"{naive_state['selected']} (val {naive_state['score']:.4f}); {t_naive / t_ft:.2f} plain fine-tunes")
    diffs = [abs(naive_state["rounds"][i]["scores"][kk] - opt_state["rounds"][i]["scores"][kk])
             for i in range(min(len(naive_state["rounds"]), len(opt_state["rounds"])))
             for kk in naive_state["rounds"][i]["scores"]]
    print(f"naive (in process) / optimized: {t_naive / t_opt:.2f}x wall, {c_naive / c_opt:.2f}x CPU time; "
          f"selected blocks identical: "
          f"{naive_state['selected'] == opt_state['selected']}; max |val score difference|: {max(diffs):.2e}")
    if a.skip_jobs:
        return
    jobs_state, t_jobs = naive_jobs(a, ckpt, data_path, manifest_path, blocks, sel, train_cfg)
    print(f"naive greedy selection, one job per candidate (python -m subtune score --no-fast): {t_jobs:.1f} s "
          f"-> {jobs_state['selected']}; {t_jobs / t_ft:.2f} plain fine-tunes")
    print(f"naive (a job per candidate) / optimized: {t_jobs / t_opt:.2f}x; selected blocks identical: "
          f"{jobs_state['selected'] == opt_state['selected']}")


def naive_jobs(a, ckpt, data_path, manifest_path, blocks, sel, train_cfg):
    """The paper's procedure literally: each candidate a separate training run (its own process)."""
    import os
    import tempfile

    from subtune.select import key

    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def scorer(sets):
        out = {}
        for s in sets:
            dest = tmp / f"{key(s) or 'lp'}.json"
            subprocess.run([sys.executable, "-m", "subtune", "score", "--sets", "explicit", "--candidate", key(s),
                            "--no-fast", "--data", str(data_path), "--manifest", str(manifest_path),
                            "--checkpoint", str(ckpt), "--train", json.dumps(train_cfg.to_dict()),
                            "--seed", str(a.seed), "--out", str(dest)], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out[s] = json.loads(dest.read_text())["results"][0]["score"]
        return out

    return timed(lambda: greedy(blocks, scorer, sel))


if __name__ == "__main__":
    main()
