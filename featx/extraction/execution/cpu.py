"""What this CPU is: its model name and the vector extensions that decide which runtime and which
precision run fastest on it. Read from ``/proc/cpuinfo`` (Linux) with ``platform`` as fallback."""

from __future__ import annotations

import functools
import os
import platform

# The extensions that matter to convolution kernels, in the order people name them.
EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16",
              "amx_int8", "neon", "asimd", "bf16")
# Flags under which a CPU multiplies bfloat16 natively: AVX-512 BF16, AMX, or Arm's BF16.
NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16")
# Flags under which a CPU computes int8 dot products in one instruction; without them OpenVINO
# emulates int8 and runs slower than float32.
INT8_DOT = ("amx_int8", "avx512_vnni", "avx_vnni")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def model_name() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def flags() -> frozenset[str]:
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def extensions() -> list[str]:
    """This CPU's vector extensions among ``EXTENSIONS``."""
    have = flags()
    return [e for e in EXTENSIONS if e in have]


def has_native_bf16() -> bool:
    return any(f in flags() for f in NATIVE_BF16)


def has_int8_dot() -> bool:
    return any(f in flags() for f in INT8_DOT)


def describe() -> str:
    """``AMD EPYC, 2 cores, avx2 fma``: how a benchmark and the runtime choice name this CPU."""
    return f"{model_name()}, {os.cpu_count()} cores, {' '.join(extensions()) or 'no vector extensions known'}"
