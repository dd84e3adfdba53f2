"""Forward + backward time and peak memory of every attention kind, against the fused kernel.

For each size, every kind (the harness's modules from `build_attention`) runs forward and
backward on the same random input; `sdpa` is `torch.nn.functional.scaled_dot_product_attention`
alone on 4 heads of width 16, the floor no kind can beat, and `additive_naive` is additive
attention with the scores computed by the naive broadcast form (the whole
(B, h, L, L, d) tensor at once), the form the harness's chunked kernel replaces.

Time: median of `--repeats` runs after warm-up, in this process (kinds interleaved per
repeat, since the machines here are shared and noisy). Peak memory: each kind and size runs
once more in a fresh subprocess, and the figure is its peak resident memory above what the
process held just before (Linux's VmHWM, reset first), so it covers autograd's saved tensors
and every temporary. Ratios are printed last: the additive module against the same module
with the naive form, and the score kernel alone (scores and their gradients) against the
naive kernel, and torch's tanh against its sigmoid (why the kernel goes through the sigmoid).

    .venv/bin/python benchmarks/attention.py                 # default sizes + L = 64, 256, 1024
    .venv/bin/python benchmarks/attention.py --no-memory --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.config import MODEL_DEFAULTS, TRAIN_DEFAULTS
from harness.models.additive import additive_scores, additive_scores_naive
from harness.models.attention import AdditiveAttention, AdditiveParams, build_attention

KINDS = ["sdpa", "dot", "scaled_dot", "multihead", "additive", "additive_naive"]
NAIVE_LIMIT = 3 * 2**30  # bytes: skip the naive form where its (B,h,L,L,d) tensors need more


class NaiveAdditive(AdditiveAttention):
    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return additive_scores_naive(q, k, self.v_a)


def make(kind: str, batch: int, length: int, d_model: int, d_k: int) -> Callable[[], None]:
    """One forward + backward of `kind` at this size, as a closure over fixed inputs."""
    torch.manual_seed(0)
    if kind == "sdpa":
        heads = 4
        q, k, v = (torch.randn(batch, heads, length, d_k, requires_grad=True) for _ in range(3))

        def step() -> None:
            F.scaled_dot_product_attention(q, k, v).sum().backward()

        return step
    module = (
        NaiveAdditive(d_model, d_k, **AdditiveParams.defaults())
        if kind == "additive_naive"
        else build_attention(kind, d_model, d_k)
    )
    x = torch.randn(batch, length, d_model, requires_grad=True)

    def step() -> None:
        out, _ = module(x)
        out.sum().backward()

    return step


def kernel_times(batch: int, length: int, d_k: int, repeats: int) -> tuple[float, float]:
    """The additive score kernel alone (scores and their gradients, one head), harness
    against naive, interleaved: median seconds of each."""
    torch.manual_seed(0)
    qa, ka = (torch.randn(batch, 1, length, d_k, requires_grad=True) for _ in range(2))
    v = torch.randn(1, d_k, requires_grad=True)
    fns = [lambda: additive_scores(qa, ka, v), lambda: additive_scores_naive(qa, ka, v)]
    times: list[list[float]] = [[], []]
    for fn in fns:
        fn().sum().backward()
    for _ in range(repeats):
        for fn, spent in zip(fns, times, strict=True):
            started = time.perf_counter()
            fn().sum().backward()
            spent.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def tanh_vs_sigmoid(elements: int, repeats: int) -> tuple[float, float]:
    """Median seconds of torch.tanh and torch.sigmoid over `elements` float32 values,
    interleaved: the additive kernel computes tanh(x) as 2 sigmoid(2x) - 1 because of this."""
    x = torch.randn(elements)
    fns = [torch.tanh, torch.sigmoid]
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for fn, spent in zip(fns, times, strict=True):
            started = time.perf_counter()
            fn(x)
            spent.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def naive_bytes(batch: int, length: int, d_k: int) -> int:
    return 4 * batch * length * length * d_k  # one float32 (B, 1, L, L, d) tensor


def time_all(sizes: list[tuple[int, int]], repeats: int, d_model: int, d_k: int) -> dict:
    steps = {}
    for batch, length in sizes:
        for kind in KINDS:
            if kind == "additive_naive" and naive_bytes(batch, length, d_k) > NAIVE_LIMIT:
                continue
            steps[(kind, batch, length)] = make(kind, batch, length, d_model, d_k)
    for step in steps.values():  # warm-up
        step()
    times: dict = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            started = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - started)
    return {key: statistics.median(values) for key, values in times.items()}


def peak_memory(kind: str, batch: int, length: int, d_model: int, d_k: int) -> float:
    """MiB of peak resident memory above the resident memory before the step, in a fresh
    subprocess: Linux's peak (VmHWM) is reset just before (clear_refs 5), so import-time
    peaks do not count."""
    code = (
        "import sys, torch\n"
        "sys.path.insert(0, 'benchmarks')\n"
        "from attention import make\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        f"step = make({kind!r}, {batch}, {length}, {d_model}, {d_k})\n"
        "def kib(field):\n"
        "    line = next(l for l in open('/proc/self/status') if l.startswith(field))\n"
        "    return int(line.split()[1])\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = kib('VmRSS:')\n"
        "step()\n"
        "print((kib('VmHWM:') - before) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--sweep-batch", type=int, default=8, help="batch for the length sweep")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    d_model, d_k = MODEL_DEFAULTS["d_model"], MODEL_DEFAULTS["d_k"]
    default = (TRAIN_DEFAULTS["batch_size"], 64)  # the harness's defaults, length 64
    sizes = [default] + [(args.sweep_batch, n) for n in args.lengths]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d_model {d_model}, "
          f"d_k {d_k}; forward + backward, median of {args.repeats}")  # fmt: skip
    times = time_all(sizes, args.repeats, d_model, d_k)
    print(f"{'batch':>5} {'L':>5} {'kind':<15} {'ms':>9} {'x sdpa':>8} {'peak MiB':>9}")
    for batch, length in sizes:
        floor = times[("sdpa", batch, length)]
        for kind in KINDS:
            key = (kind, batch, length)
            if key not in times:
                need = naive_bytes(batch, length, d_k) / 2**30
                print(f"{batch:>5} {length:>5} {kind:<15} skipped: one (B,h,L,L,d) tensor is "
                      f"{need:.1f} GiB")  # fmt: skip
                continue
            memory = (
                "" if args.no_memory else f"{peak_memory(kind, batch, length, d_model, d_k):9.1f}"
            )
            print(f"{batch:>5} {length:>5} {kind:<15} {1000 * times[key]:9.2f} "
                  f"{times[key] / floor:8.1f} {memory:>9}")  # fmt: skip
    print("ratios, naive form time / harness time (additive module; score kernel alone):")
    for batch, length in sizes:
        naive = times.get(("additive_naive", batch, length))
        if naive:
            ratio = naive / times[("additive", batch, length)]
            ours, theirs = kernel_times(batch, length, d_k, 3 * args.repeats)
            print(f"  batch {batch}, L {length}: module {ratio:.2f}x; kernel {theirs / ours:.2f}x "
                  f"({1000 * ours:.1f} ms vs {1000 * theirs:.1f} ms)")  # fmt: skip
    batch, length = default
    tanh, sigmoid = tanh_vs_sigmoid(batch * length * length * d_k, 3 * args.repeats)
    print(f"  element-wise over one (B,h,L,L,d) tensor at the defaults: tanh {1000 * tanh:.2f} ms, "
          f"sigmoid {1000 * sigmoid:.2f} ms ({tanh / sigmoid:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
