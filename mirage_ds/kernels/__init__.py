"""Fused loss kernels. ``rmu_loss`` dispatches the masked RMU activation-norm loss to Triton (CUDA),
torch.compile (CPU) or the eager reference; the Triton module is imported only when chosen, because
importing it fixes whether its kernel is compiled or interpreted (``TRITON_INTERPRET``)."""

from mirage_ds.kernels.dispatch import KERNELS, KernelName, resolve_kernel, rmu_loss
from mirage_ds.kernels.eager import NORMS, Norm, rmu_loss_eager

__all__ = ["KERNELS", "NORMS", "KernelName", "Norm", "resolve_kernel", "rmu_loss", "rmu_loss_eager"]
