"""What every benchmark prints about the machine it ran on, so a figure can be traced to its CPU."""

from __future__ import annotations

import platform
from pathlib import Path

# The instruction sets that decide which kernels serve: int8 dot products (VNNI, AMX), bf16, or AVX2 only.
_FEATURES = (("avx512_vnni", "AVX-512 VNNI"), ("avx512_bf16", "BF16"), ("amx_int8", "AMX"))


def cpu_model() -> str:
    """The CPU's model name with its family, model and the SIMD features that matter here: machines lent as
    plain "AMD EPYC" were Zen 4 and Zen 5 parts ~2x apart on the text benchmark."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor describes them all
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    features = [label for flag, label in _FEATURES if flag in flags]
    if not features and "avx2" in flags:
        features = ["AVX2"]
    if "cpu family" in info:
        features.insert(0, f"family {info['cpu family']} model {info['model']}")
    return f"{name} ({', '.join(features)})" if features else name
