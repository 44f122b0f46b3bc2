"""Stage two, fit-head: its defaults (torch-free), fitting on features streamed from disk in
blocks, and the run itself: fit, evaluate each split, write a bundle."""
