"""The fused RMU loss paths (Triton, torch.compile) against the eager reference: values and gradients.

The Triton kernel runs on CPU under Triton's interpreter. ``triton.jit`` decides between compiling for a
GPU and interpreting when the kernel's module is imported, from ``TRITON_INTERPRET`` at that moment;
setting the variable inside this pytest process would leak into every later test and every subprocess
they launch (distributed ranks, CLI runs), and depend on import order. So the interpreted runs happen in
one child process (this file run as a script) per test session: the parent writes the cases, the child
returns the kernel's losses and gradients, and each case is compared here against eager in-process.

Tolerances. fp32: atol 1e-5, rtol 1e-5 (the paths sum in different orders). bf16: the loss is computed in
fp32 from the same bf16 inputs, so it keeps the fp32 tolerance; gradients are rounded to bf16 (eager: once;
Triton: once in the forward and once more when scaled by grad_output), so they agree to 2 bf16 ulps,
rtol 2^-6.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mirage_ds.kernels import resolve_kernel, rmu_loss
from mirage_ds.kernels.compiled import compile_available

REPO = Path(__file__).resolve().parent.parent
# Backward with grad_output 1.7 checks the kernel's in-place scaling of its stored gradient; 1.0 (a loss
# with weight 1) takes the kernel's no-multiply shortcut.
GRAD_OUTS = (1.7, 1.0)
WIDE_D = 4096 + 37  # wider than the kernel's 4096 block: the column loop runs twice, the second partial

CASES = [f"{dtype}-{target}-{norm}-{mask}-{d}"
         for dtype in ("fp32", "bf16") for target in ("forget", "retain") for norm in ("mean", "sum_d")
         for mask in ("ragged", "empty", "full") for d in (37,)]
CASES += ["fp32-retain-sum_d-ragged-wide", "bf16-forget-mean-ragged-wide", "fp32-retain-mean-ragged-strided"]
RUNS = [f"{case}@{GRAD_OUTS[0]}" for case in CASES] + [f"{case}@{GRAD_OUTS[1]}" for case in CASES[::5]]


def make_case(case: str) -> dict[str, torch.Tensor | str]:
    """h [3, 5, D]; target [D] (forget) or [3, 5, D] (retain); mask [3, 5] with the case's pattern.

    Masked-out positions of h hold NaN and Inf: a path that reads them or multiplies them by 0 fails.
    """
    dtype_name, target_kind, norm, mask_kind, width = case.split("-")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    d = WIDE_D if width == "wide" else 37
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    if width == "strided":
        h = torch.randn(5, 3, d, generator=g).to(dtype).transpose(0, 1)  # [3, 5, D], not contiguous
    else:
        h = torch.randn(3, 5, d, generator=g).to(dtype)
    mask = torch.rand(3, 5, generator=g) > 0.4
    mask[1] = False  # one sequence with no masked-in token
    mask[0, 0] = True
    if mask_kind == "empty":
        mask[:] = False
    elif mask_kind == "full":
        mask[:] = True
    h[~mask] = torch.tensor([math.nan, math.inf] * d, dtype=dtype)[:d]
    # The control is fp32 as RMULoss builds it; frozen activations share the policy's dtype.
    target = (torch.rand(d, generator=g) * 3 if target_kind == "forget"
              else torch.randn(3, 5, d, generator=g).to(dtype))
    return {"h": h, "target": target, "mask": mask, "norm": norm}


def run_case(inputs: dict[str, torch.Tensor | str], kernel: str, grad_out: float) -> dict[str, torch.Tensor]:
    h = inputs["h"].detach().clone().requires_grad_()  # clone keeps the strides of the strided case
    loss = rmu_loss(h, inputs["target"], inputs["mask"], inputs["norm"], kernel)
    loss.backward(torch.tensor(grad_out))
    with torch.no_grad():
        loss_no_grad = rmu_loss(h, inputs["target"], inputs["mask"], inputs["norm"], kernel)
    return {"loss": loss.detach(), "grad": h.grad, "loss_no_grad": loss_no_grad}


def assert_matches(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    for key in ("loss", "loss_no_grad"):
        assert got[key].dtype == torch.float32
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
    assert got["grad"].dtype == dtype and torch.isfinite(got["grad"]).all()
    if dtype == torch.float32:
        torch.testing.assert_close(got["grad"], want["grad"], atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(got["grad"].float(), want["grad"].float(), atol=1e-6, rtol=2**-6)


def eager_reference(run: str) -> tuple[dict[str, torch.Tensor], torch.dtype]:
    case, grad_out = run.split("@")
    inputs = make_case(case)
    want = run_case(inputs, "eager", float(grad_out))
    mask = inputs["mask"]
    assert torch.isfinite(want["grad"]).all() and not want["grad"][~mask].any()  # padding gets zero grad
    if not mask.any():
        assert want["loss"].item() == 0.0
    return want, inputs["h"].dtype


@pytest.fixture(scope="session")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    """Triton kernel outputs for every run, computed by a child process under TRITON_INTERPRET=1."""
    folder = tmp_path_factory.mktemp("triton_interpret")
    inputs, outputs = folder / "cases.pt", folder / "results.pt"
    torch.save({run: make_case(run.split("@")[0]) for run in RUNS}, inputs)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, str(inputs), str(outputs)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(outputs)


@pytest.mark.parametrize("run", RUNS)
def test_triton_interpreted_matches_eager(run: str, interpreted: dict[str, dict[str, torch.Tensor]]) -> None:
    want, dtype = eager_reference(run)
    assert_matches(interpreted[run], want, dtype)


@pytest.mark.parametrize("run", RUNS)
def test_compiled_matches_eager(run: str) -> None:
    want, dtype = eager_reference(run)
    case, grad_out = run.split("@")
    assert_matches(run_case(make_case(case), "compile", float(grad_out)), want, dtype)


def test_interpreter_child_ran_the_triton_kernel(interpreted: dict[str, dict[str, torch.Tensor]]) -> None:
    assert interpreted["_resolved"]["triton"] and interpreted["_resolved"]["interpreted"]


def test_triton_backward_twice_is_refused(interpreted: dict[str, dict[str, torch.Tensor]]) -> None:
    # The kernel scales its stored gradient in place; a second backward must fail, not double-scale.
    assert interpreted["_resolved"]["second_backward_refused"]


def test_dispatch_names_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_kernel("auto", cpu) == ("compile" if compile_available(cpu) else "eager")
    assert resolve_kernel("eager", cpu) == "eager"
    with pytest.raises(ValueError, match="unknown RMU kernel 'cuda'.*auto, triton, compile, eager"):
        resolve_kernel("cuda", cpu)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        rmu_loss(torch.randn(1, 2, 3), torch.ones(3), torch.ones(1, 2, dtype=torch.bool), "mean", kernel="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled Triton kernel needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", ["mean", "sum_d"])
def test_triton_cuda_matches_eager(dtype: torch.dtype, norm: str) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(4, 512, 4096, device="cuda", generator=g).to(dtype).requires_grad_()
    mask = torch.rand(4, 512, device="cuda", generator=g) > 0.3
    for target in (torch.rand(4096, device="cuda", generator=g), torch.randn_like(h).detach()):
        inputs = {"h": h, "target": target, "mask": mask, "norm": norm}
        for grad_out in GRAD_OUTS:
            assert_matches(run_case(inputs, "triton", grad_out), run_case(inputs, "eager", grad_out), dtype)


def _interpreted_child(inputs: Path, outputs: Path) -> None:
    """Child side of ``interpreted``: run every case through kernel "triton" and save the results."""
    from mirage_ds.kernels import triton_rmu

    cases = torch.load(inputs)
    results: dict[str, dict[str, torch.Tensor]] = {
        run: run_case(args, "triton", float(run.split("@")[1])) for run, args in cases.items()}
    h = torch.randn(2, 3, 8, requires_grad=True)
    loss = rmu_loss(h, torch.ones(8), torch.ones(2, 3, dtype=torch.bool), "mean", kernel="triton")
    (2 * loss).backward(retain_graph=True)
    try:
        (2 * loss).backward()
        refused = False
    except RuntimeError:
        refused = True
    results["_resolved"] = {"triton": resolve_kernel("triton", torch.device("cpu")) == "triton",
                            "interpreted": triton_rmu.INTERPRETED, "second_backward_refused": refused}
    torch.save(results, outputs)


if __name__ == "__main__":
    _interpreted_child(Path(sys.argv[1]), Path(sys.argv[2]))
