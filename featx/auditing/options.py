"""audit's defaults, written once for the library and the command line (no scikit-learn, so that
the command line's help costs none)."""

FOLDS = 5
# Two images whose features' similarity (``duplicates.embedded``) is at least this are reported as
# a pair: chosen on photos re-encoded and resized against distinct photos (docs/commands/audit.md).
SIMILARITY = 0.8
