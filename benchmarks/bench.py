"""Benchmarks of the hot paths of :mod:`mtgmm`, side by side in one run.

1. Bank training over T = 100 timesteps (cosine schedule): :func:`mtgmm.training.train_bank`
   (all timesteps in one batched pass per step) against :func:`mtgmm.training.train_bank_loop`
   (a Python loop over timesteps), same options, the quick preset's batch sizes (64
   sequences per timestep at L = 8, 8 at L = 128). Seconds per step are *marginal*:
   ``(wall(n steps) − wall(n0 steps)) / (n − n0)``, which removes the calibration, warm start
   and final evaluation that both functions do once. Requirement: batched ≥ 5× faster.
2. Fused (:func:`mtgmm.attend`) against explicit (:func:`mtgmm.attend_explicit`) attention,
   forward and forward+backward, d = 8, L = 64 … 4096 (``torch.utils.benchmark``).
3. Throughput of :func:`mtgmm.oracle_eps` (tokens/s, float32) and :func:`mtgmm.bayes_risk`
   (samples/s at 200,000 samples).

Prints Markdown tables. Usage::

    PYTHONPATH=lib python benchmarks/bench.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.utils.benchmark as tbench

import mtgmm
from mtgmm import AttentionBank, MultiTokenGMM, NoiseSchedule
from mtgmm.runtime import set_preset
from mtgmm.training import train_bank, train_bank_loop

D = 8
REQUIRED_SPEEDUP = 5.0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def wall(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_wall(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(wall(fn, device) for _ in range(repeats))


def quick_batch(n_tokens: int) -> int:
    """The quick preset's bank batch size per timestep (as in the sampling chapter's
    ``bank_recipe``): 64 sequences for L ≤ 32, 8 for longer contexts; the full preset uses
    :class:`~mtgmm.training.TrainOptions`' default of 64."""
    return mtgmm.by_preset(64 if n_tokens <= 32 else 8, 64)


def bench_banks(device, gmm, quick: bool) -> tuple[list[str], bool]:
    """Batched vs looped bank training; returns table rows and whether the requirement holds."""
    n_steps_t = 100
    schedule = NoiseSchedule.cosine(n_steps_t)
    short, long = (2, 6) if quick else (5, 25)
    token_counts = (8,) if quick else (8, 128)
    rows, ok = [], True
    for n_tokens in token_counts:
        batch = quick_batch(n_tokens)
        per_step, totals = {}, {}
        for name, fn in (("batched", train_bank), ("loop", train_bank_loop)):

            def run(steps: int, fn=fn, n_tokens=n_tokens, batch=batch) -> None:
                bank = AttentionBank(n_steps_t, D).to(device)
                fn(
                    bank,
                    gmm.to(device=device),
                    schedule,
                    n_tokens,
                    steps,
                    generator=torch.Generator(device=device).manual_seed(0),
                    progress=False,
                    batch_size=batch,
                    n_eval_sequences=64,
                )

            run(1)  # warm-up
            reps = 1 if quick else 2
            t_short = min(wall(lambda: run(short), device) for _ in range(reps))
            t_long = min(wall(lambda: run(long), device) for _ in range(reps))
            per_step[name] = max(t_long - t_short, 1e-9) / (long - short)
            totals[name] = t_long
        marginal = per_step["loop"] / per_step["batched"]
        overall = totals["loop"] / totals["batched"]
        ok &= marginal >= REQUIRED_SPEEDUP and overall >= REQUIRED_SPEEDUP
        for name in ("batched", "loop"):
            rows.append(
                f"| {name} | {n_tokens} | {batch} | {per_step[name] * 1e3:.1f} "
                f"| {totals[name]:.2f} |"
            )
        ratio = f"| **{marginal:.1f}×** | **{overall:.1f}×** |"
        rows.append(f"| **loop / batched** | {n_tokens} | " + ratio)
    return rows, ok


def bench_attention(device, quick: bool) -> list[str]:
    lengths = (64, 256, 1024) if quick else (64, 256, 1024, 4096)
    budget = 2**20 if quick else 2**22  # n · L² (score entries per call)
    min_run = 0.05 if quick else 0.2
    gen = torch.Generator().manual_seed(0)
    w_kq = (0.1 * torch.randn(D, D, generator=gen)).to(device)
    w_v = torch.randn(D, D, generator=gen).to(device)
    rows = []
    for n_tokens in lengths:
        n = max(1, budget // n_tokens**2)
        x = torch.randn(n, n_tokens, D, generator=gen).to(device)
        cells = []
        for mode in ("fwd", "fwd+bwd"):
            times = {}
            for name, fn in (("fused", mtgmm.attend), ("explicit", mtgmm.attend_explicit)):
                if mode == "fwd":
                    stmt, env = "with torch.no_grad(): fn(x, w_kq, w_v)", {"x": x}
                else:
                    xg, wg = x.clone().requires_grad_(), w_kq.clone().requires_grad_()
                    stmt = "fn(x, w_kq, w_v).sum().backward()"
                    env = {"x": xg, "w_kq": wg}
                timer = tbench.Timer(
                    stmt,
                    globals={"torch": torch, "fn": fn, "w_kq": w_kq, "w_v": w_v, **env},
                    num_threads=torch.get_num_threads(),
                )
                times[name] = timer.blocked_autorange(min_run_time=min_run).median
            cells.append(
                f"{times['fused'] * 1e3:.2f} | {times['explicit'] * 1e3:.2f} "
                f"| {times['explicit'] / times['fused']:.2f}×"
            )
        rows.append(f"| {n_tokens} | {n} | " + " | ".join(cells) + " |")
    return rows


def bench_oracle(device, gmm, quick: bool) -> list[str]:
    local = gmm.to(device=device, dtype=torch.float32)
    n_tokens = 2**18 if quick else 2**21
    x = torch.randn(n_tokens // 64, 64, D, device=device)
    t_oracle = median_wall(lambda: mtgmm.oracle_eps(local, x, 0.5), device, 5)
    n_samples = 50_000 if quick else 200_000

    def risk() -> None:
        mtgmm.bayes_risk(local, 0.5, n_samples, torch.Generator(device=device).manual_seed(0))

    t_risk = median_wall(risk, device, 3)
    return [
        f"| `oracle_eps` (float32, {n_tokens:,} tokens) | {t_oracle * 1e3:.1f} ms "
        f"| {n_tokens / t_oracle / 1e6:.1f} M tokens/s |",
        f"| `bayes_risk` ({n_samples:,} samples) | {t_risk * 1e3:.1f} ms "
        f"| {n_samples / t_risk / 1e6:.2f} M samples/s |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: mtgmm.pick_device()")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else mtgmm.pick_device()
    set_preset("quick")  # the quick preset's batch sizes for the bank benchmark
    gmm = MultiTokenGMM.orthogonal(4, 8, 4.0, 0.5)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    started = time.perf_counter()

    print(f"# mtgmm benchmarks ({datetime.date.today()}{', --quick' if args.quick else ''})\n")
    print("| machine | torch | device | threads | load (1 min) |")
    print("|---|---|---|---|---|")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(
        f"| {cpu_model()} | {torch.__version__} | {dev_name} | {torch.get_num_threads()} "
        f"| {load:.2f} |\n"
    )

    print("## Bank training, T = 100 (cosine), marginal time per step\n")
    steps = "2 and 6" if args.quick else "5 and 25"
    print(f"Runs of {steps} steps (min of repeats); ms/step = difference / extra steps.\n")
    print("| method | L | batch / timestep | ms / step (marginal) | wall, longer run (s) |")
    print("|---|---|---|---|---|")
    rows, ok = bench_banks(device, gmm, args.quick)
    print("\n".join(rows))
    verdict = "holds" if ok else "FAILS"
    print(f"\nRequirement batched ≥ {REQUIRED_SPEEDUP:.0f}× faster than the loop: **{verdict}**\n")

    print("## Attention, d = 8: fused (`attend`) vs explicit (`attend_explicit`), median ms\n")
    print("| L | n | fwd fused | fwd explicit | ratio | fwd+bwd fused | fwd+bwd explicit | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(bench_attention(device, args.quick)))

    print("\n## Oracle throughput (ᾱ = 0.5)\n")
    print("| function | median time | throughput |")
    print("|---|---|---|")
    print("\n".join(bench_oracle(device, gmm, args.quick)))
    print(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
