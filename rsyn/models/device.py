"""Turn --device auto|cpu|cuda[:N] into a device string, importing torch only when a GPU might exist.

Importing torch costs seconds and hundreds of MiB. A stage that runs no model (or only faiss) must
not pay it on a CPU machine, so the first question, "could this machine have a GPU at all?", is
answered from the environment and the driver's files; torch (or faiss) is asked only when it could.
"""

from __future__ import annotations

import os
import shutil

# What a GPU driver leaves on a Linux machine (or container): NVIDIA's proc directory and control
# device, ROCm's kernel driver (ROCm builds of torch also call their devices "cuda"), WSL's GPU bridge.
_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
_HIDDEN = {"", "-1", "none", "nodevfiles", "void"}


def gpu_might_exist() -> bool:
    """False only when this process surely sees no GPU; answered without importing torch.

    CUDA_VISIBLE_DEVICES set to nothing (or -1) hides every GPU; otherwise a GPU is possible when
    a driver left its files or nvidia-smi is installed.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip().lower() in _HIDDEN:
        return False
    return any(os.path.exists(p) for p in _DRIVER_PATHS) or shutil.which("nvidia-smi") is not None


def _parse(option: str) -> str:
    option = (option or "auto").strip().lower()
    if option in ("auto", "cpu", "cuda") or (option.startswith("cuda:") and option[5:].isdigit()):
        return option
    from rsyn.errors import RsynError

    raise RsynError(f"--device {option!r}: expected auto, cpu, cuda or cuda:N")


def _no_cuda(option: str):
    from rsyn.errors import RsynError

    return RsynError(f"--device {option}: no CUDA device is available (use --device cpu or auto)")


def resolve_device(option: str) -> str:
    """The torch device for a model ('cpu', 'cuda:0', ...). torch is imported only if a GPU might exist."""
    option = _parse(option)
    if option == "cpu" or (option == "auto" and not gpu_might_exist()):
        return "cpu"
    if not gpu_might_exist():
        raise _no_cuda(option)
    import torch

    if not torch.cuda.is_available():
        if option == "auto":
            return "cpu"
        raise _no_cuda(option)
    return "cuda:0" if option in ("auto", "cuda") else option


def resolve_faiss_device(option: str) -> str:
    """The device for a faiss-only stage, without torch: 'cuda:N' when this faiss build sees a GPU."""
    option = _parse(option)
    if option == "cpu" or (option == "auto" and not gpu_might_exist()):
        return "cpu"
    from rsyn.vectors import faiss_gpu_count

    count = faiss_gpu_count() if gpu_might_exist() else 0
    if option == "auto":
        return "cuda:0" if count else "cpu"
    if not count:
        raise _no_cuda(option)
    return "cuda:0" if option == "cuda" else option
