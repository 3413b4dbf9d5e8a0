"""Masked RMU activation-norm loss: eager vs torch.compile (CPU), and vs the Triton kernel (CUDA), side by side.

Each row times forward + backward of ``mirage_ds.kernels.rmu_loss`` on one [tokens, D] activation with
~70% of tokens masked in, for the forget target (the [D] control vector) and the retain target (frozen
[tokens, D] activations). All kernels of a row see the same tensors in the same run.

Peak memory. CUDA: ``torch.cuda.max_memory_allocated`` over the step, minus what was allocated before it.
CPU: the highest running total of torch's CPU allocations during one profiled step, from the profiler's
per-allocation records (``profile_memory=True``); RSS or tracemalloc would miss or blur them (glibc keeps
freed pages, tracemalloc does not see torch's allocator). Both include the gradient written into h.grad.

Bandwidth (CUDA): the least traffic the loss needs is read h + write dL/dh (+ read the target for retain);
``% HBM`` is that byte count over the measured time, against ``--hbm-tbps`` (H100 SXM: 3.35 TB/s).

    .venv/bin/python benchmarks/rmu_kernel.py [--sizes 4096 8192 16384 32768] [--dim 4096] \\
        [--dtypes bf16 fp32] [--targets forget retain] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from mirage_ds.kernels import rmu_loss

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def step_fn(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kernel: str) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        # Dropping the last step's gradient first, so each step allocates h.grad afresh (and a profiled
        # step does not count freeing the old one against its own allocations).
        h.grad = None
        loss = rmu_loss(h, target, mask, "mean", kernel)
        loss.backward()
        return loss

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # kernels are asynchronous: time until the GPU has finished


def time_ms(steps: dict[str, Callable[[], torch.Tensor]], device: torch.device, warmup: int,
            repeats: int) -> dict[str, float]:
    """Median ms per step for each kernel. Repeats are interleaved across kernels, so load from other
    processes on a shared machine lands on all of them alike instead of on whichever ran last."""
    for step in steps.values():
        for _ in range(warmup):  # the first compile call builds the graph; the first Triton call JITs
            step()
    sync(device)
    samples: dict[str, list[float]] = {kernel: [] for kernel in steps}
    for _ in range(repeats):
        for kernel, step in steps.items():
            start = time.perf_counter()
            step()
            sync(device)
            samples[kernel].append((time.perf_counter() - start) * 1e3)
    return {kernel: statistics.median(times) for kernel, times in samples.items()}


def cpu_peak_bytes(step: Callable[[], torch.Tensor]) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # Every allocation and free is one "[memory]" record with a signed size; the public events() list keeps
    # only those outside an operator, so read the raw records.
    records = [e for e in prof.profiler.kineto_results.events()
               if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    running = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        running += record.nbytes()
        peak = max(peak, running)
    return peak


def cuda_peak_bytes(step: Callable[[], torch.Tensor]) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768], help="tokens")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--targets", nargs="+", choices=["forget", "retain"], default=["forget", "retain"])
    parser.add_argument("--kernels", nargs="+", choices=["eager", "compile", "triton"], default=None,
                        help="compared with eager (always run); default: compile (CPU), compile triton (CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hbm-tbps", type=float, default=3.35)
    args = parser.parse_args()

    device = torch.device(args.device)
    chosen = args.kernels or (["compile", "triton"] if device.type == "cuda" else ["compile"])
    kernels = ["eager"] + [k for k in chosen if k != "eager"]  # eager first: the reference for ratios and diffs
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# RMU loss fwd+bwd, norm=mean, D={args.dim}, ~70% tokens masked in, {name}, torch {torch.__version__}, "
          f"median of {args.repeats}")
    header = "| tokens | dtype | target | kernel | ms | x eager | peak MiB | max abs dloss | max abs dgrad |"
    if device.type == "cuda":
        header += f" % HBM ({args.hbm_tbps} TB/s) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))

    for tokens in args.sizes:
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            g = torch.Generator(device=device).manual_seed(0)
            h = torch.randn(tokens, args.dim, generator=g, device=device, dtype=torch.float32).to(dtype)
            h = h.view(1, tokens, args.dim).requires_grad_()
            mask = torch.rand(1, tokens, generator=g, device=device) < 0.7
            for target_name in args.targets:
                target = (torch.rand(args.dim, generator=g, device=device) if target_name == "forget"
                          else torch.randn(1, tokens, args.dim, generator=g, device=device).to(dtype))
                steps = {kernel: step_fn(h, target, mask, kernel) for kernel in kernels}
                times = time_ms(steps, device, args.warmup, args.repeats)
                ref_loss = ref_grad = None
                for kernel, step in steps.items():
                    h.grad = None
                    peak = cuda_peak_bytes(step) if device.type == "cuda" else cpu_peak_bytes(step)
                    loss, grad = step().detach().float(), h.grad.detach().float()
                    if ref_loss is None:
                        ref_loss, ref_grad = loss, grad
                    ms = times[kernel]
                    row = (f"| {tokens} | {dtype_name} | {target_name} | {kernel} | {ms:.2f} | "
                           f"{times[kernels[0]] / ms:.2f} | {peak / 2**20:.0f} | {(loss - ref_loss).abs().item():.1e} | "
                           f"{(grad - ref_grad).abs().max().item():.1e} |")
                    if device.type == "cuda":
                        moved = tokens * args.dim * h.element_size() * 2
                        moved += tokens * args.dim * target.element_size() if target_name == "retain" else 0
                        row += f" {100 * moved / (ms * 1e-3) / (args.hbm_tbps * 1e12):.0f} |"
                    print(row, flush=True)
                del target
            h.grad = None
            del h


if __name__ == "__main__":
    main()
