"""Image data: finding images in folders (no torch), opening and checking them, the readers that
feed a model from worker processes, JPEG decoding on the device, and augmentation."""
