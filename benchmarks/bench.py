"""Benchmarks of the hot paths of :mod:`mtgmm`, side by side in one run (issue #3).

1. Bank training over T = 100 timesteps (cosine schedule): :func:`mtgmm.training.train_bank`
   (all timesteps batched, :meth:`mtgmm.AttentionBank.by_timestep`) against
   :func:`mtgmm.fast.train_bank_loop` (a Python loop over timesteps, each layer trained
   by :func:`mtgmm.train`'s recipe), with the batch sizes of the sampling chapter's quick
   preset (:func:`bank_recipe`: 64 sequences per timestep at L = 8, 8 at L = 128). Both
   get identical options and do the same work: the same steps and sequences
   per timestep, the same calibration, warm start and final evaluation (batched: once over
   all timesteps; loop: once per timestep), the same attention kernel. Each round times both
   methods at two step counts, A B A B, so both see the same background load; per round,
   time per step = difference / extra steps (one-off work cancels), one-off time = the
   rest. Medians over rounds, and the loop / batched ratio of each round.
   The ratio loop / batched per step is reported; the old requirement (≥ 5× on this CPU) is
   retired: batching only removes per-layer overhead on identical arithmetic (README).
   Then, per L, where a step of each method spends its time (sampling, loss and gradient,
   the rest) and the largest speedup those parts allow.
2. Fused (:func:`mtgmm.attention.attend_fused`) against explicit
   (:func:`mtgmm.attend_explicit`) attention, forward and forward+backward (gradient in the
   weights), d = 8, L = 64 … 4096, fused and explicit timed alternately; and which of the
   two :func:`mtgmm.attend` picks on this device.
3. Throughput of :func:`mtgmm.oracle_eps` (tokens/s, float32) and :func:`mtgmm.bayes_risk`
   (samples/s).

Prints Markdown (machine, load averages, tables). ``--readme`` also writes it into
``benchmarks/README.md`` between the ``bench:start`` and ``bench:end`` markers. Usage::

    PYTHONPATH=lib python benchmarks/bench.py            # 1-2 minutes on 2 CPU cores
    PYTHONPATH=lib python benchmarks/bench.py --quick    # smoke run, seconds
    PYTHONPATH=lib python benchmarks/bench.py --full     # larger sizes, for GPUs

Exit status 0 whenever the benchmark runs to the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import mtgmm
from mtgmm import AttentionBank, MultiTokenGMM, NoiseSchedule
from mtgmm.attention import attend_explicit, attend_fused
from mtgmm.fast import BankLoss, train_bank_loop, uses_fused
from mtgmm.objective import ddpm_loss
from mtgmm.training import _sampler, train_bank

D = 8
N_STEPS_T = 100
README = Path(__file__).with_name("README.md")
MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")


def bank_recipe(
    n_tokens: int,
    short: tuple[int, int] = (300, 64),
    long: tuple[int, int] = (100, 8),
    longest_short: int = 32,
) -> tuple[int, int]:
    """(steps, sequences per timestep) for a bank at L = ``n_tokens``: ``short`` up to
    L = ``longest_short``, ``long`` beyond. The defaults are the sizes of the sampling
    chapter's quick preset (its ``SIZES`` cell); at L = 128 they keep a step at
    T·B·L² ≈ 6.6 million attention scores for T = 50."""
    return short if n_tokens <= longest_short else long


@dataclass(frozen=True)
class Sizes:
    """What one preset of the benchmark runs."""

    token_counts: tuple[int, ...]  # bank training contexts L
    step_counts: tuple[tuple[int, int], ...]  # (short, long) runs per L
    rounds: int  # interleaved bank rounds
    lengths: tuple[int, ...]  # attention contexts
    scores: int  # n · L² per attention call
    attention_rounds: int
    min_time: float  # seconds per attention timing
    oracle_tokens: int
    risk_samples: int


PRESETS = {
    "quick": Sizes((8,), ((1, 3),), 1, (64, 256), 2**18, 2, 0.01, 2**16, 20_000),
    "default": Sizes(
        (8, 128),
        ((2, 22), (2, 12)),
        5,
        (64, 256, 1024, 2048, 4096),
        2**22,
        5,
        0.05,
        2**21,
        200_000,
    ),
    "full": Sizes(
        (8, 128),
        ((5, 55), (5, 55)),
        7,
        (64, 256, 1024, 4096, 16384),
        2**26,
        7,
        0.1,
        2**24,
        2**21,
    ),
}


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def wall(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (device work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int,
    repeat: int = 1,
    warm_up: bool = True,
) -> dict[str, list[float]]:
    """Per name, ``rounds`` timings of ``repeat`` calls each (seconds per call), taking the
    functions in turn A B A B … so that slow phases of background load hit all of them."""
    for fn in fns.values() if warm_up else ():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(
                wall(lambda fn=fn: [fn() for _ in range(repeat)], device) / repeat
            )
    return times


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median [min – max]`` of ``values`` times ``scale``."""
    v = [x * scale for x in values]
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return (
        f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f} – {max(v):.{digits}f}]"
    )


def bench_bank(
    device, gmm, n_tokens: int, steps: tuple[int, int], rounds: int
) -> tuple[list[str], str, float]:
    """For one L: rows of the bank table, the row of the where-the-time-goes table, and the
    median per-step ratio loop / batched. Each round runs both methods at both step counts
    (A B A B) and then times the parts of a step (:func:`step_parts`), so that all of a
    round's figures see the same background load."""
    schedule = NoiseSchedule.cosine(N_STEPS_T)
    preset_steps, batch = bank_recipe(n_tokens)
    methods = {"batched": train_bank, "loop": train_bank_loop}

    def run(fn, n_steps: int) -> Callable[[], object]:
        return lambda: fn(
            AttentionBank(N_STEPS_T, D).to(device),
            gmm,
            schedule,
            n_tokens,
            n_steps,
            generator=torch.Generator(device=device).manual_seed(0),
            progress=False,
            batch_size=batch,
            n_eval_sequences=64,
        )

    for fn in methods.values():
        run(fn, 1)()  # warm-up
    parts = step_parts(device, gmm, n_tokens, batch)
    short, long = steps
    timed: dict = {}
    for _ in range(rounds):
        for n_steps in steps:
            for name, fn in methods.items():  # A B A B
                timed.setdefault((name, n_steps), []).append(
                    wall(run(fn, n_steps), device)
                )
        for name, times in interleaved(
            parts, device, 1, repeat=3, warm_up=False
        ).items():
            timed.setdefault(name, []).extend(times)
    per_step, once, projected = {}, {}, {}
    for name in methods:
        t_short, t_long = timed[name, short], timed[name, long]
        per_step[name] = [
            (b - a) / (long - short) for a, b in zip(t_short, t_long, strict=True)
        ]
        once[name] = [
            a - short * s for a, s in zip(t_short, per_step[name], strict=True)
        ]
        projected[name] = [
            o + preset_steps * s
            for o, s in zip(once[name], per_step[name], strict=True)
        ]
    rows = [
        f"| {name} | {n_tokens} | {batch} | {spread(per_step[name], 1e3)} "
        f"| {spread(once[name], 1, 2)} | {spread(timed[name, long], 1, 2)} "
        f"| {spread(projected[name], 1, 1)} |"
        for name in methods
    ]

    def ratios(table: dict) -> list[float]:
        return [lo / ba for lo, ba in zip(table["loop"], table["batched"], strict=True)]

    step_ratio = ratios(per_step)
    rows.append(
        f"| **loop / batched** | {n_tokens} | {batch} | **{spread(step_ratio, 1, 2)}×** "
        f"| {spread(ratios(once), 1, 2)}× "
        f"| {spread(ratios({name: timed[name, long] for name in methods}), 1, 2)}× "
        f"| {spread(ratios(projected), 1, 2)}× |"
    )
    return (
        rows,
        anatomy_row(n_tokens, batch, timed, per_step),
        statistics.median(step_ratio),
    )


def step_parts(
    device, gmm, n_tokens: int, batch: int
) -> dict[str, Callable[[], object]]:
    """The parts of one training step, per method: sampling its sequences, and the loss with
    its gradient (batched: ``mtgmm.fast.BankLoss`` over all timesteps; loop: ``ddpm_loss``
    and autograd on each of the T layers, as :func:`mtgmm.train` does)."""
    bank = AttentionBank(N_STEPS_T, D).to(device)
    with torch.no_grad():
        for p in bank.parameters():
            p.normal_(0, 0.1)
    params = list(bank.parameters())
    layers = [bank.layer(k).to(device) for k in range(N_STEPS_T)]
    draw = _sampler(
        gmm, torch.Generator(device=device).manual_seed(0), device, torch.float32
    )
    levels = NoiseSchedule.cosine(N_STEPS_T).alpha_bar.to(device)
    ab = levels.repeat_interleave(batch)[:, None]
    x, eps = (
        v.view(N_STEPS_T, batch, n_tokens, D) for v in draw(ab, len(ab), n_tokens)
    )

    def loop_gradients() -> None:
        for layer, xs, es in zip(layers, x, eps, strict=True):
            torch.autograd.grad(ddpm_loss(layer(xs), es), list(layer.parameters()))

    parts = {
        "batched sampling": lambda: draw(ab, len(ab), n_tokens),
        "batched gradient": lambda: torch.autograd.grad(
            BankLoss.apply(*params, x, eps, False), params
        ),
        "loop sampling": lambda: [
            draw(level, batch, n_tokens) for level in levels.tolist()
        ],
        "loop gradient": loop_gradients,
    }
    for fn in parts.values():
        fn()  # warm-up
    return parts


def anatomy_row(n_tokens: int, batch: int, timed: dict, per_step: dict) -> str:
    """Medians over rounds of each part, of the rest of the step (ms / step minus the parts,
    per round) and of the bound and ceiling (see :func:`report`)."""
    cells, bound, ceiling = [], [], []
    for m in ("batched", "loop"):
        sampling, gradient = timed[f"{m} sampling"], timed[f"{m} gradient"]
        rest = [
            s - a - b for s, a, b in zip(per_step[m], sampling, gradient, strict=True)
        ]
        cells += [statistics.median(v) * 1e3 for v in (sampling, gradient, rest)]
    for loop, a, b in zip(
        per_step["loop"],
        timed["batched sampling"],
        timed["batched gradient"],
        strict=True,
    ):
        bound.append(loop / (a + b))
        ceiling.append(loop / a)
    return (
        f"| {n_tokens} | {batch} | "
        + " | ".join(f"{v:.1f}" for v in cells)
        + f" | {statistics.median(bound):.1f}× | {statistics.median(ceiling):.1f}× |"
    )


def bench_attention(device, sizes: Sizes) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    w_kq = (0.1 * torch.randn(D, D, generator=gen)).to(device)
    w_v = torch.randn(D, D, generator=gen).to(device)
    rows = []
    for n_tokens in sizes.lengths:
        n = max(1, sizes.scores // n_tokens**2)
        x = torch.randn(n, n_tokens, D, generator=gen).to(device)
        cells = []
        for backward in (False, True):
            fns = {
                name: _attention_call(fn, x, w_kq, w_v, backward)
                for name, fn in (("fused", attend_fused), ("explicit", attend_explicit))
            }
            probe = wall(fns["fused"], device)
            repeat = max(1, round(sizes.min_time / max(probe, 1e-6)))
            times = interleaved(fns, device, sizes.attention_rounds, repeat)
            ratio = [
                e / f for e, f in zip(times["explicit"], times["fused"], strict=True)
            ]
            cells.append(
                f"{spread(times['fused'], 1e3, 2)} | {spread(times['explicit'], 1e3, 2)} "
                f"| {statistics.median(ratio):.2f}×"
            )
        picked = "fused" if uses_fused(x) else "explicit"
        rows.append(f"| {n_tokens} | {n} | " + " | ".join(cells) + f" | {picked} |")
    return rows


def _attention_call(fn, x, w_kq, w_v, backward: bool) -> Callable[[], object]:
    """One forward (no graph), or forward+backward to the weights, of ``fn``."""
    if not backward:

        def call() -> None:
            with torch.no_grad():
                fn(x, w_kq, w_v)

        return call
    weights = [w_kq.clone().requires_grad_(), w_v.clone().requires_grad_()]
    return lambda: torch.autograd.grad(fn(x, *weights).sum(), weights)


def bench_oracle(device, gmm, sizes: Sizes) -> list[str]:
    local = gmm.to(device=device, dtype=torch.float32)
    x = torch.randn(sizes.oracle_tokens // 64, 64, D, device=device)

    def risk() -> None:
        generator = torch.Generator(device=device).manual_seed(0)
        mtgmm.bayes_risk(local, 0.5, sizes.risk_samples, generator)

    times = interleaved(
        {"oracle": lambda: mtgmm.oracle_eps(local, x, 0.5), "risk": risk}, device, 5
    )
    t_oracle, t_risk = (
        statistics.median(times["oracle"]),
        statistics.median(times["risk"]),
    )
    return [
        f"| `oracle_eps` (float32, {sizes.oracle_tokens:,} tokens) | {t_oracle * 1e3:.1f} ms "
        f"| {sizes.oracle_tokens / t_oracle / 1e6:.1f} M tokens/s |",
        f"| `bayes_risk` ({sizes.risk_samples:,} samples) | {t_risk * 1e3:.1f} ms "
        f"| {sizes.risk_samples / t_risk / 1e6:.2f} M samples/s |",
    ]


def machine_table(device: torch.device) -> list[str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return [
        "| CPU | cores | torch | device | threads | load avg 1 / 5 / 15 min |",
        "|---|---|---|---|---|---|",
        f"| {cpu_model()} | {os.cpu_count()} | {torch.__version__} | {name} "
        f"| {torch.get_num_threads()} | {load_average()} |",
    ]


def report(device: torch.device, preset: str, sizes: Sizes) -> None:
    """Print the whole benchmark."""
    gmm = MultiTokenGMM.orthogonal(4, D, 4.0, 0.5).to(device=device)
    started = time.perf_counter()
    print(f"### Run of {datetime.datetime.now():%Y-%m-%d %H:%M} (`{preset}`)\n")
    print("\n".join(machine_table(device)) + "\n")

    print(f"#### Bank training, T = {N_STEPS_T} (cosine), batched vs loop\n")
    print(
        f"{sizes.rounds} rounds; in each, both methods run A B A B at two step counts per L "
        "(listed below). ms / step = (long − short) / extra steps; one-off = calibration, "
        "warm start and final evaluation (64 sequences per timestep), the same work for both. "
        "Projected run = one-off + the quick preset's steps (`bank_recipe`: 300 at L = 8, 100 "
        "at L = 128) × ms / step. Medians [min – max] over rounds; ratios per round.\n"
    )
    steps = ", ".join(
        f"L = {n}: {a} and {b}"
        for n, (a, b) in zip(sizes.token_counts, sizes.step_counts, strict=True)
    )
    print(f"Step counts: {steps}.\n")
    print(
        "| method | L | batch / timestep | ms / step | one-off (s) | long run (s) "
        "| projected run (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    verdicts, anatomy = [], []
    for n_tokens, step_pair in zip(sizes.token_counts, sizes.step_counts, strict=True):
        rows, parts, ratio = bench_bank(device, gmm, n_tokens, step_pair, sizes.rounds)
        print("\n".join(rows), flush=True)
        verdicts.append((n_tokens, ratio))
        anatomy.append(parts)
    print()
    for n_tokens, ratio in verdicts:
        print(f"- L = {n_tokens}: batched {ratio:.1f}× faster per step than the loop.")
    print(f"\nLoad average after the bank runs: {load_average()}.\n")

    print("#### Where a training step spends its time, ms (medians)\n")
    print(
        "Sampling the step's sequences and the loss with its gradient timed alone, in the same "
        "rounds as the runs above (loop: summed over the T layers); rest = ms / step above "
        "minus both, per round (update, logging, Python; noisy, as a difference). Bound = "
        "loop ms / step ÷ (batched sampling + gradient): the speedup if the batched step cost "
        "nothing else. Ceiling = loop ms / step ÷ batched "
        "sampling: the speedup even if the batched loss and gradient were free (sampling must "
        "draw the same random numbers as before, so it is not sped up here).\n"
    )
    print(
        "| L | batch | batched: sampling | gradient | rest | loop: sampling | gradient | rest "
        "| bound | ceiling |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(anatomy) + "\n")

    print(f"#### Attention, d = {D}: fused vs explicit, ms per call\n")
    print(
        f"n = {sizes.scores:,} / L² sequences per call; {sizes.attention_rounds} alternating "
        "rounds; ratio = explicit / fused (> 1: fused faster); `attend` = the kernel "
        "`mtgmm.attend` uses at this L on this device.\n"
    )
    print(
        "| L | n | fwd fused | fwd explicit | ratio | fwd+bwd fused | fwd+bwd explicit | ratio "
        "| `attend` |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(bench_attention(device, sizes)), flush=True)

    print("\n#### Oracle throughput (ᾱ = 0.5), medians of 5\n")
    print("| function | time | throughput |")
    print("|---|---|---|")
    print("\n".join(bench_oracle(device, gmm, sizes)))
    print(f"\nLoad average at the end: {load_average()}.")
    print(f"Total benchmark time: {time.perf_counter() - started:.0f} s.")


def write_readme(text: str) -> None:
    """Replace the text between the markers of README.md with ``text``."""
    content = README.read_text()
    start, end = (content.index(marker) for marker in MARKERS)
    README.write_text(
        content[: start + len(MARKERS[0])] + "\n\n" + text + "\n" + content[end:]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run of a few seconds")
    size.add_argument(
        "--full", action="store_true", help="larger sizes and more rounds (GPUs)"
    )
    parser.add_argument("--device", default=None, help="default: mtgmm.pick_device()")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: robust to load)",
    )
    parser.add_argument(
        "--readme", action="store_true", help="write the figures to README.md"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else mtgmm.pick_device()
    preset = "quick" if args.quick else "full" if args.full else "default"
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(Tee(sys.stdout, buffer)):
            report(device, preset, PRESETS[preset])
    finally:  # leave the process as it was (tests call main in-process)
        torch.set_num_threads(threads)
    if args.readme:
        write_readme(buffer.getvalue())
    return 0


class Tee(io.TextIOBase):
    """Write to several streams at once (the terminal and the README buffer)."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


if __name__ == "__main__":
    raise SystemExit(main())
