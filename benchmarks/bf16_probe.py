"""What bfloat16 features do to the logistic probe: each dev set, the same split, float32 against
bfloat16 features of the same base.

    .venv/bin/python benchmarks/bf16_probe.py        # Lite0 on ../shared/data's two sets

Where this CPU computes bfloat16 natively and OpenVINO is installed, the bfloat16 features are
featx's own (``extract --dtype bfloat16``). Elsewhere they are emulated in torch: the input and
weights of every convolution and linear layer rounded to bfloat16, products summed in float32,
which is what AVX-512 BF16's dot products (and so OpenVINO's bf16 precision) compute; the line
says which it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import featx
from featx.backbones.registry import register
from featx.extraction.execution import cpu
from featx.extraction.execution.exported import installed

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


def _round_inputs_and_weights(module: nn.Module, args: tuple) -> tuple:
    with torch.no_grad():
        module.weight.data = _bf16(module.weight.data)
    return (_bf16(args[0]), *args[1:])


def emulated(name: str) -> str:
    """Register ``name`` again, computing as bfloat16 hardware would; return the new name."""
    spec = featx.get_backbone(name)

    def build() -> nn.Module:
        model = spec.build()
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.register_forward_pre_hook(_round_inputs_and_weights)
        return model

    register(dataclasses.replace(spec, name=f"{name}-bf16-emulated", build=build))
    return f"{name}-bf16-emulated"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--data", nargs="+", type=Path, default=[SHARED / "flowers128", SHARED / "hymenoptera"])
    args = p.parse_args()
    native = cpu.has_native_bf16() and "openvino" in installed()
    print(f"bf16 probe: {args.backbone}; CPU {cpu.describe()}; bfloat16 "
          f"{'native, OpenVINO' if native else 'emulated in torch (this CPU has no native bf16)'}")
    bf16_backbone = args.backbone if native else emulated(args.backbone)
    runtime = featx.Runtime(progress=False, execution="auto" if native else "eager")
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            ref = featx.extract(data, args.backbone, out=Path(tmp) / f"{data.name}-32.h5",
                                dtype="float32", runtime=featx.Runtime(progress=False))
            low = featx.extract(data, bf16_backbone, out=Path(tmp) / f"{data.name}-16.h5",
                                dtype="bfloat16" if native else None, runtime=runtime)
            a, b = featx.open_cache(ref.path), featx.open_cache(low.path)
            assert a.paths == b.paths
            diff = np.abs(a.features - b.features).max() / np.abs(a.features).max()
            full, half = (featx.fit_head(r.path, out=Path(tmp) / f"{r.path.stem}-head").metrics["val"]
                          for r in (ref, low))
            print(f"{data.name}: logistic probe val accuracy float32 {full['accuracy']:.4f}, bfloat16 "
                  f"{half['accuracy']:.4f} ({full['n']} images: one is {1 / full['n']:.4f}); features "
                  f"differ by {diff:.1e} (relative to the largest)", flush=True)


if __name__ == "__main__":
    main()
