"""Hostile input (issue 31): files crafted to cost memory, to redirect writes, to replace what a
run reads, or to crash featx, each end in one line or are handled as documented."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

# Extract, the device's crop and fine-tuning's plain crop of 118-byte PNGs of 1×12000 px, in a
# process of their own so that its peak memory is theirs; it prints that peak in MB.
_ELONGATED = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    import torch
    import featx
    from featx.backbones.preprocessing import Preprocessing
    from featx.data.augmentation import train_transform
    from featx.data.device_decode import _crop
    from featx.data.images import load_rgb
    root = Path(sys.argv[1])
    found = featx.extract(root, out=root.parent / "x.h5", weights="none",
                          runtime=featx.Runtime(workers=0, progress=False))
    assert (found.n_images, found.n_failed) == (2, 0), found
    p = Preprocessing(256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert _crop(torch.zeros(3, 1, 12000, dtype=torch.uint8), 1, p).shape == (3, 224, 224)
    image = load_rgb(next(root.rglob("*.png")))
    assert train_transform(p, ["flip"])(image).shape == (3, 224, 224)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
""")


def test_tiny_files_of_huge_aspect_cost_bounded_memory(tmp_path):
    for name, size in (("wide", (12000, 1)), ("tall", (1, 12000))):
        path = tmp_path / "data" / "c" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 50, 40)).save(path, optimize=True)
        assert path.stat().st_size < 200
    r = subprocess.run([sys.executable, "-c", _ELONGATED, str(tmp_path / "data")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # Importing torch and building the model is ~0.8 GB; resizing these whole cost 7.6 GB.
    assert int(r.stdout.split()[-1]) < 1500
