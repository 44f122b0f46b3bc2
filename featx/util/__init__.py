"""Small helpers every part shares: files written whole and checked, progress bars, tensors
saved as data."""
