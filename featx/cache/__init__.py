"""The HDF5 feature cache: its format, writing it whole (also from arrays), reading it back whole or
in blocks, reusing rows still valid, the shards of an unfinished run, and the one-writer lock."""
