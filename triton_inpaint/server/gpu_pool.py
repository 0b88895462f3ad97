"""Triton's CUDA memory pool, sized from each GPU's memory when a repository runs networks on GPUs.

GPU tensors passed between the denoise model and the networks (DLPack over BLS) are allocated from
this pool; Triton's 64 MiB default is less than one decoded 2048 px image, and a pool that runs out
makes Triton copy through host memory. The Helm chart sets the pool itself; ``serve`` sets it the same
way unless the operator passed ``--cuda-memory-pool-byte-size`` (their value wins).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

POOL_FLAG = "--cuda-memory-pool-byte-size"
# 1/32 of the GPU's memory, within these bounds: 512 MiB holds a 2048 px request's tensors with room for
# several in flight (the chart's default); a larger GPU serves more requests at once.
POOL_SHARE = 32
POOL_MIN, POOL_MAX = 512 << 20, 4 << 30


def repository_uses_gpu(repositories: Sequence[object]) -> bool:
    """Whether a local repository holds a model with instances on the GPU (``KIND_GPU``)."""
    for repository in repositories:
        if isinstance(repository, Path | str) and Path(repository).is_dir():
            for config in Path(repository).glob("*/config.pbtxt"):
                if "KIND_GPU" in config.read_text():
                    return True
    return False


def gpu_memory_mib() -> list[tuple[int, int]]:
    """(index, total MiB) of each visible NVIDIA GPU; empty without a GPU or nvidia-smi."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in done.stdout.strip().splitlines():
        index, total = (part.strip() for part in line.split(","))
        gpus.append((int(index), int(float(total))))
    return gpus


def pool_bytes(total_mib: int) -> int:
    return min(max((total_mib << 20) // POOL_SHARE, POOL_MIN), POOL_MAX)


def cuda_pool_args(
    repositories: Sequence[object], extra_args: Sequence[str], gpus: list[tuple[int, int]] | None = None
) -> list[str]:
    """The ``--cuda-memory-pool-byte-size`` arguments ``serve`` adds for ``repositories``: one per GPU
    when a model runs on GPUs and the operator set none; ``gpus`` (index, MiB) is read from nvidia-smi
    unless given."""
    if any(arg.startswith(POOL_FLAG) for arg in extra_args) or not repository_uses_gpu(repositories):
        return []
    gpus = gpu_memory_mib() if gpus is None else gpus
    return [f"{POOL_FLAG}={index}:{pool_bytes(total)}" for index, total in gpus]
