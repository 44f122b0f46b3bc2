"""Stage four: images classified with a saved bundle (``score``), or with a backbone's own
ImageNet head as a sanity check (``classify``)."""
