"""Backbones: the spec and registry (torch-free), the frozen feature extractor, where weights come
from, how pixels are prepared for them, and one file per family of networks."""
