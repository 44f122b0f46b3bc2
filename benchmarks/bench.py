"""How close `featx extract` runs to the limit of the machine, and what that saves.

    .venv/bin/python benchmarks/bench.py                       # Lite0 on ../shared/data
    .venv/bin/python benchmarks/bench.py --backbone resnet50 --weights none --only throughput

In one run, on the same images, it measures and prints:
  (a) the model-only forward throughput on random uint8 batches: plain torch's eager runs in NCHW
      and channels_last, featx's torch fold, and the exported graph on each installed runtime
      (ONNX Runtime, OpenVINO; bfloat16 on OpenVINO where the CPU computes it natively, and int8
      where it has int8 dot products, shown beside the rest). The limit
      is the fastest rate at a precision extract's default may use here: float32 on every runtime,
      and bfloat16 where it is native; measured again just before each dataset's (b), for its b/a;
  (b) `featx extract` end to end, from the first file read to the closed HDF5 file;
  (c) a loop in the style of the Keras/PyTorch recipes: PIL decode and transform, forward in
      NCHW, one process, features kept in a list and saved at the end;
and the ratios b/a and b/c with the peak memory of each run, and what decoding an image costs.
Then: the peak memory of extract on N and 10×N images (the folder repeated by symlinks);
fit-head on 200,000 × 2,048 synthetic features; and 10 epochs of a linear head trained the
recipes' way (the frozen base run every epoch) against featx's extract once + fit-head.

Every measurement runs in a child process of its own (fit-head's in ``heads_at_scale.py``), so
each memory figure is that run's alone: "peak memory" is the largest sum, sampled every second, of
the proportional set size (PSS) of the process and its DataLoader workers, so pages the workers
share with it are counted once. The
machine should be otherwise idle; ratios within one run are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
SECTIONS = ("throughput", "memory", "heads", "epochs")
# Torch as it comes, without featx's allocator setting: the baselines of (a).
PLAIN = ("eager-nchw-plain", "eager-plain")


# --- measuring a child process ------------------------------------------------------------------

def _pss(pid: int) -> int:
    """PSS in bytes of ``pid`` and all its descendants; 0 for what has already gone."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            pass
    return total


def run_child(job: str, plain: bool = False, **kwargs) -> dict:
    """Run ``job`` (a function of this file) in a new process; its result, with ``peak_bytes``.
    ``plain``: torch as it comes, without the allocator setting featx makes on import."""
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"} if plain else None
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps([job, kwargs])],
                            stdout=subprocess.PIPE, text=True, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _pss(proc.pid))
        # Reading PSS walks the page tables under the process's memory lock, which its page faults
        # then wait for: sampled often, it slows the run it measures.
        time.sleep(1.0)
    out = proc.stdout.read()
    if proc.returncode:
        sys.exit(f"bench: the {job} run failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "peak_bytes": peak}


# --- the jobs, each run in its own process ------------------------------------------------------

def job_forward(backbone: str, weights: str | None, batch_size: int, batches: int,
                execution: str, dtype: str = "float32") -> dict:
    """Images/s of one execution on a random batch, run over and over as extraction runs it,
    and the largest difference of its features from eager ones."""
    import torch

    import featx
    from featx.extraction.execution.prepare import prepare

    model = featx.load_backbone(backbone, weights)
    size = model.preprocessing.crop_size
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    graph = None
    if dtype == "int8":  # calibrated on these random images: their ranges change nothing of its speed
        from featx.extraction.execution import exported, quantized

        graph = quantized.quantize(model, exported.export(model), x.numpy(), key="bench-random")
    if execution == "eager-nchw":
        f = model
    else:
        f = prepare(model, execution, torch.device("cpu"), batch_size, dtype, graph)
        if f.execution != execution:
            sys.exit(f"bench: {execution} was refused, {f.execution} ran instead")
    with torch.inference_mode():
        start = time.perf_counter()
        f(x)  # a compiled model compiles here
        setup = time.perf_counter() - start
        f(x)
        start = time.perf_counter()
        for _ in range(batches):
            out = f(x)
        rate = batches * batch_size / (time.perf_counter() - start)
        ref = featx.load_backbone(backbone, weights)(x)
    return {"rate": rate, "setup": setup,
            "relative_difference": ((out - ref).abs().max() / ref.abs().max()).item()}


def job_decode(data: str, backbone: str, weights: str | None, batch_size: int, n: int = 300) -> dict:
    """Milliseconds of one core per image to read, decode, resize and crop, as featx's workers do
    (PIL decodes, torch resizes the uint8 tensor), and with the resize done by PIL on the image,
    as the recipes do; and the largest pixel difference between the two."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    import featx
    from featx.data.images import load_rgb

    torch.set_num_threads(1)  # as in a DataLoader worker
    pre = featx.get_backbone(backbone).preprocessing
    paths = [Path(data) / s.path for s in featx.scan(data).samples][:n]

    def pil(path):
        image = TF.resize(load_rgb(path), [pre.resize_size], InterpolationMode(pre.interpolation),
                          antialias=True)
        return TF.pil_to_tensor(TF.center_crop(image, [pre.crop_size]))

    result = {}
    for name, crop in [("featx", lambda path: pre.crop(load_rgb(path))), ("pil", pil)]:
        crop(paths[0])
        start = time.perf_counter()
        result[name] = [crop(p) for p in paths]
        result[f"{name}_ms"] = (time.perf_counter() - start) / len(paths) * 1000
    result["max_pixel_difference"] = max(int((a.int() - b.int()).abs().max())
                                         for a, b in zip(result.pop("featx"), result.pop("pil"), strict=True))
    return result


def job_extract(data: str, out: str, backbone: str, weights: str | None, batch_size: int,
                execution: str) -> dict:
    import featx

    r = featx.extract(data, backbone, weights, out=out, force=True,
                      runtime=featx.Runtime(batch_size=batch_size, progress=False, execution=execution))
    return {"images": r.n_images + r.n_failed, "seconds": r.seconds, "execution": r.execution,
            "dtype": r.dtype}


def _recipe_transform(pre, train: bool):
    from torchvision import transforms as T

    interpolation = T.InterpolationMode(pre.interpolation)
    if train:
        return T.Compose([T.RandomResizedCrop(pre.crop_size, interpolation=interpolation),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    return T.Compose([T.Resize(pre.resize_size, interpolation), T.CenterCrop(pre.crop_size),
                      T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def job_recipe(data: str, out: str, backbone: str, weights: str | None, batch_size: int) -> dict:
    """Features the way the tutorials get them: one process, PIL, NCHW, eager."""
    import h5py
    import numpy as np
    import torch
    from PIL import Image

    import featx

    start = time.perf_counter()
    model = featx.load_backbone(backbone, weights)
    transform = _recipe_transform(model.preprocessing, train=False)
    paths = [Path(data) / s.path for s in featx.scan(data).samples]
    features = []
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i:i + batch_size]])
            features.append(model.base(x).mean((2, 3)).numpy())
    with h5py.File(out, "w") as f:
        f["features"] = np.concatenate(features)
    return {"images": len(paths), "seconds": time.perf_counter() - start}


def job_recipe_epochs(data: str, backbone: str, weights: str | None, batch_size: int, epochs: int,
                      workers: int) -> dict:
    """PyTorch's "ConvNet as fixed feature extractor": ImageFolder, augmented training images, the
    frozen base run on every image in every epoch, a linear layer trained by SGD, and validation
    each epoch."""
    import torch
    from torchvision.datasets import ImageFolder

    import featx

    start = time.perf_counter()
    extractor = featx.load_backbone(backbone, weights)
    pre = extractor.preprocessing
    loaders = {split: torch.utils.data.DataLoader(
        ImageFolder(Path(data) / split, _recipe_transform(pre, train=split == "train")),
        batch_size=batch_size, shuffle=split == "train", num_workers=workers)
        for split in ("train", "val")}
    n_classes = len(loaders["train"].dataset.classes)
    head = torch.nn.Linear(extractor.feature_dim, n_classes)
    opt = torch.optim.SGD(head.parameters(), lr=1e-3, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    accuracy = 0.0
    for _ in range(epochs):
        for x, y in loaders["train"]:
            with torch.no_grad():
                f = extractor.base(x).mean((2, 3))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(f), y).backward()
            opt.step()
        schedule.step()
        right = total = 0
        with torch.no_grad():
            for x, y in loaders["val"]:
                right += (head(extractor.base(x).mean((2, 3))).argmax(1) == y).sum().item()
                total += len(y)
        accuracy = right / total
    return {"seconds": time.perf_counter() - start, "val_accuracy": accuracy}


def job_featx_epochs(data: str, out: str, backbone: str, weights: str | None, batch_size: int) -> dict:
    import featx

    start = time.perf_counter()
    r = featx.extract(data, backbone, weights, out=out, force=True,
                      runtime=featx.Runtime(batch_size=batch_size, progress=False))
    fit = featx.fit_head(r.path, model="linear")
    return {"seconds": time.perf_counter() - start, "extract_seconds": r.seconds,
            "val_accuracy": fit.metrics["val"]["accuracy"]}


JOBS = {name[4:]: f for name, f in globals().items() if name.startswith("job_")}


# --- the image folders --------------------------------------------------------------------------

def subset(data: Path, n: int | None, dest: Path, copies: int = 1) -> tuple[Path, int]:
    """A folder of symlinks to ``n`` images of ``data`` spread evenly over it (all if None), in the
    same class and split layout, each linked ``copies`` times; and how many links it holds."""
    import featx

    samples = featx.scan(data).samples
    if n is not None and n < len(samples):
        samples = [samples[math.floor(i * len(samples) / n)] for i in range(n)]
    for s in samples:
        for c in range(copies):
            link = dest / s.path.parent / (f"copy{c}" if copies > 1 else "") / s.path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((data / s.path).resolve())
    return dest, len(samples) * copies


# --- the report ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default=None, help="as for featx extract; 'none' where the weights "
                                                   "cannot be downloaded (speed does not depend on them)")
    p.add_argument("--data", nargs="+", type=Path,
                   default=[SHARED / "flowers128", SHARED / "hymenoptera"])
    p.add_argument("--images", type=int, default=1600, help="images per dataset (default 1600; 0: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--execution", default="auto", help="featx's execution for (b) (default auto)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile in (a)")
    p.add_argument("--forward-batches", type=int, default=10)
    p.add_argument("--memory-images", type=int, default=300, help="N for the N vs 10 N run")
    p.add_argument("--heads-n", type=int, default=200_000)
    p.add_argument("--heads-dim", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        job, kwargs = json.loads(args.child)
        result = JOBS[job](**kwargs)
        with open("/proc/self/status") as f:  # the exact peak of the main process alone
            result["main_peak_bytes"] = next(int(line.split()[1]) * 1024 for line in f
                                             if line.startswith("VmHWM:"))
        print(json.dumps(result))
        return
    sections = args.only.split(",")
    model = dict(backbone=args.backbone, weights=args.weights, batch_size=args.batch_size)

    import torch

    from featx.extraction.execution import cpu
    from featx.extraction.execution.exported import installed
    from featx.util.files import size_text

    runtimes = installed()
    if not runtimes:
        sys.exit("bench: neither onnxruntime nor openvino is installed, so there is no limit to "
                 "measure against: pip install onnxruntime openvino")
    versions = ", ".join(f"{r} {__import__(r).__version__}" for r in runtimes)
    # The precisions extract's default may choose on this CPU, as (runtime, dtype).
    candidates = [(r, "float32") for r in runtimes]
    if "openvino" in runtimes and cpu.has_native_bf16():
        candidates.append(("openvino", "bfloat16"))
    print(f"featx benchmark: {args.backbone} (weights {args.weights or 'default'}), batch "
          f"{args.batch_size}, execution {args.execution}, default precision; CPU {cpu.describe()}, "
          f"{'native' if cpu.has_native_bf16() else 'no'} bfloat16; torch {torch.__version__}, "
          f"{versions}", flush=True)

    def name(runtime: str, dtype: str) -> str:
        return runtime if dtype == "float32" else f"{runtime}-{dtype}"

    def limit() -> tuple[str, float]:
        """The fastest model-only rate at a precision the default may use, measured now."""
        rates = {name(r, d): run_child("forward", **model, execution=r, dtype=d,
                                       batches=args.forward_batches)["rate"] for r, d in candidates}
        best = max(rates, key=rates.get)
        return best, rates[best]

    with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp:
        work = Path(tmp)
        if "throughput" in sections:
            names = [*PLAIN, "fold", *runtimes, *["compile"] * args.compile]
            runs = {n: run_child("forward", plain=n in PLAIN, **model,
                                 execution=n.removesuffix("-plain"), batches=args.forward_batches)
                    for n in names}
            # int8 beside them: never the default, so never the limit
            int8 = "openvino" in runtimes and cpu.has_int8_dot()
            shown = [*candidates, *[("openvino", "int8")] * int8]
            runs |= {name(r, d): run_child("forward", **model, execution=r, dtype=d,
                                           batches=args.forward_batches)
                     for r, d in shown if d != "float32"}
            fastest = max((name(r, d) for r, d in candidates), key=lambda n: runs[n]["rate"])
            top, eager = runs[fastest]["rate"], runs["eager-plain"]["rate"]
            print("(a) forward, random uint8 batches, img/s: " + ", ".join(
                f"{n} {r['rate']:.1f}" for n, r in runs.items()))
            print(f"    limit: {fastest}, {top / eager:.2f}x plain torch's eager channels_last and "
                  f"{top / runs['fold']['rate']:.2f}x featx's torch fold; largest feature difference "
                  f"from eager (relative): " + ", ".join(
                      f"{n} {r['relative_difference']:.1e}" for n, r in runs.items()))
            if args.compile:
                print(f"    compile: the first batch took {runs['compile']['setup']:.0f} s (compiling)")
            print(f"{'dataset':14s} {'images':>6s} {'(a) torch':>10s} {'(a) limit':>22s} "
                  f"{'(b) extract':>12s} {'(c) recipe':>11s} {'b/a':>5s} {'b/c':>5s} "
                  f"{'peak mem b':>11s} {'peak mem c':>11s}")
            for data in args.data:
                folder, n = subset(data, args.images or None, work / data.name)
                # The limits again, just before (b): this machine's speed drifts over minutes, and
                # b/a should compare two runs made under the same conditions.
                torch_rate = run_child("forward", **model, execution="fold",
                                       batches=args.forward_batches)["rate"]
                best, rate = limit()
                decode = run_child("decode", data=str(folder), **model)
                b = run_child("extract", data=str(folder), out=str(work / f"{data.name}.h5"),
                              **model, execution=args.execution)
                c = run_child("recipe", plain=True, data=str(folder),
                              out=str(work / f"{data.name}-recipe.h5"), **model)
                rb, rc = b["images"] / b["seconds"], c["images"] / c["seconds"]
                print(f"{data.name:14s} {n:6d} {torch_rate:10.1f} {f'{best} {rate:.1f}':>22s} "
                      f"{rb:12.1f} {rc:11.1f} {rb / rate:5.2f} {rb / rc:5.2f} "
                      f"{size_text(b['peak_bytes']):>11s} {size_text(c['peak_bytes']):>11s}"
                      f"  (b ran on {b['execution']} in {b['dtype']}; decoding {decode['featx_ms']:.2f} "
                      f"ms of one core an image, {decode['pil_ms']:.2f} resized by PIL, pixels within "
                      f"{decode['max_pixel_difference']})", flush=True)
        if "memory" in sections:
            data = args.data[0]
            runs = []
            for copies in (1, 10):
                folder, n = subset(data, args.memory_images, work / f"mem{copies}", copies)
                r = run_child("extract", data=str(folder), out=str(work / f"mem{copies}.h5"),
                              **model, execution=args.execution)
                runs.append((n, r))
            (n1, r1), (n10, r10) = runs
            print(f"memory: extract of {n1} images peaks at {size_text(r1['peak_bytes'])}, of {n10} "
                  f"({data.name}, linked 10 times) at {size_text(r10['peak_bytes'])}: "
                  f"x{r10['peak_bytes'] / r1['peak_bytes']:.3f} for 10x the images; the main process "
                  f"alone (exact VmHWM) {size_text(r1['main_peak_bytes'])} and "
                  f"{size_text(r10['main_peak_bytes'])}",
                  flush=True)
        if "heads" in sections:
            from heads_at_scale import measure  # beside this file, on sys.path

            r = measure(args.heads_n, args.heads_dim, workdir=work)
            print(f"heads: fit-head --model linear on {r['n']:,} x {r['dim']:,} float32 features "
                  f"({size_text(r['nbytes'])}, streamed from HDF5): {r['seconds']:.0f} s, peak RSS "
                  f"{size_text(r['peak_rss'])} ({size_text(r['baseline_rss'])} of it torch and "
                  f"scikit-learn "
                  f"imported, before any feature is read), val accuracy {r['accuracy']:.3f}", flush=True)
        if "epochs" in sections:
            data = next((d for d in args.data if (d / "train").is_dir() and (d / "val").is_dir()), None)
            if data is None:
                print("epochs: skipped, no dataset with train/ and val/ folders")
                return
            recipe = run_child("recipe_epochs", plain=True, data=str(data), **model, epochs=args.epochs,
                               workers=os.cpu_count() or 1)
            ours = run_child("featx_epochs", data=str(data), out=str(work / "epochs.h5"), **model)
            print(f"epochs: {data.name}, a linear head for {args.epochs} epochs the recipes' way "
                  f"(base run every epoch) {recipe['seconds']:.0f} s, val accuracy "
                  f"{recipe['val_accuracy']:.3f}; featx extract once + fit-head --model linear "
                  f"{ours['seconds']:.0f} s (extract {ours['extract_seconds']:.0f} s), val accuracy "
                  f"{ours['val_accuracy']:.3f}: {recipe['seconds'] / ours['seconds']:.1f}x faster")


if __name__ == "__main__":
    main()
