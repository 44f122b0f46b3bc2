"""The feature identity: every setting that changes a feature, built, keyed and compared here alone.

A cache stores it in its attributes and a bundle in ``bundle.json`` (under ``backbone``), so each
knows what its features are; two identities that differ in any compared field describe different
features, and featx refuses to mix them, naming the field and both values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from ..util.schema import Either, Int, Items, Num, Record, Text
from .preprocessing import INTERPOLATIONS

RANDOM_INIT = "random-init"  # the weights_sha256 of a seeded random initialisation
# The features' precision. It is part of a cache's key, not of the identity, which a bundle shares
# with caches of any. float32: computed and stored in float32; every execution whose features
# agree with eager torch's to ``execution.fold.TOLERANCE`` (1e-4, relative) shares it. float16:
# stored in float16 (on a GPU also computed in it), so to float16's rounding. bfloat16: computed
# in bfloat16 (OpenVINO on a CPU that has it natively, autocast on a GPU), 1e-2 or more from
# float32 relative to the largest feature. int8: computed by the base quantized to int8 on
# calibration images (``FeatureIdentity.quantized``), stored as float32.
DTYPES = ("float32", "float16", "bfloat16", "int8")


def storage_dtype(dtype: str) -> str:
    """The HDF5 type features of ``dtype`` are stored as: HDF5 has no bfloat16, and the float32
    that bfloat16 and int8 arithmetic hand back is kept as it is."""
    return "float32" if dtype in ("bfloat16", "int8") else dtype


# The widest features and largest images a file may declare: past any backbone's (a few thousand
# features, a few hundred pixels), and small enough that an array of them is no risk.
MAX_FEATURES = 1 << 20
MAX_PIXELS = 4096
PREPROCESSING = Record({"resize_size": Int(1, MAX_PIXELS), "crop_size": Int(1, MAX_PIXELS),
                        "interpolation": Text(choices=INTERPOLATIONS), "mean": Items(Num(), 3),
                        "std": Items(Num(), 3)},
                       required=("resize_size", "crop_size", "interpolation", "mean", "std"))
# What bundle.json's ``backbone`` and a cache's attributes hold of an identity: ``preprocessing``
# empty for features made outside featx (``write_cache``); names that are file names alone.
IDENTITY_FIELDS = {"backbone": Text(1), "weights_sha256": Text(1), "pool": Text(1),
                   "feature_dim": Int(1, MAX_FEATURES), "input_size": Int(0, MAX_PIXELS),
                   "preprocessing": Either(Record(other=None), PREPROCESSING),
                   "weights_file": Text(name=True), "layers": Text(), "quantized": Text(name=True)}
IDENTITY_REQUIRED = ("backbone", "weights_sha256", "pool", "feature_dim", "input_size", "preprocessing")
IDENTITY = Record(IDENTITY_FIELDS, IDENTITY_REQUIRED)


@dataclass(frozen=True)
class FeatureIdentity:
    """What makes features what they are. ``weights_file`` is the name of the file the weights
    were read from, which says nothing of what they are, so it is kept but never compared; a
    name, not a path, as a path would not hold on another machine, and names someone's folders."""

    backbone: str
    weights_sha256: str
    pool: str
    feature_dim: int
    input_size: int
    preprocessing: dict  # ``Preprocessing.to_dict()``, as JSON gives it back (lists, not tuples)
    weights_file: str = field(default="", compare=False)
    # Module names inside the base, comma-separated, whose pooled outputs the features are;
    # "": the base's own output.
    layers: str = ""
    # The file name of the int8 graph that computed them (``execution.quantized``), which names
    # the calibration images too; "": a float precision.
    quantized: str = ""

    def __post_init__(self) -> None:
        # Tuples become lists, as they will be when read back from a cache or bundle.
        object.__setattr__(self, "preprocessing", json.loads(json.dumps(self.preprocessing)))
        object.__setattr__(self, "feature_dim", int(self.feature_dim))
        object.__setattr__(self, "input_size", int(self.input_size))

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(filter(None, self.layers.split(",")))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureIdentity:
        """From ``to_dict``'s form; keys it does not know (a later featx's) are left out."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def key(self, dtype: str) -> str:
        """The sha256 that names these features stored as ``dtype``: equal keys, same features.
        (Its recipe is that of every cache written so far, so their keys still match.)"""
        compared = {f.name: getattr(self, f.name) for f in fields(self) if f.compare}
        for name in ("layers", "quantized"):  # as it was before these were part of features
            if not compared[name]:
                del compared[name]
        return hashlib.sha256(json.dumps({**compared, "dtype": dtype}, sort_keys=True).encode()).hexdigest()

    def mismatch(self, other: FeatureIdentity) -> str | None:
        """The first compared field whose value differs between the two, or None."""
        return next((f.name for f in fields(self)
                     if f.compare and getattr(self, f.name) != getattr(other, f.name)), None)
