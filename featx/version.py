"""featx's version: read by the package root, by what records provenance, and by the build."""

__version__ = "0.1.0"
