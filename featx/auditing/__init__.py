"""Auditing a cache, built on stage two's logistic heads: its defaults (torch-free), the images
whose given label out-of-fold heads doubt, near-duplicates and leaks found by their features, and
the run itself: one CSV of the findings."""
