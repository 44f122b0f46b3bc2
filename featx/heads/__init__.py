"""The light classifiers fitted on features: the registry of heads by name, the torch head, and
saving and loading them as data."""
