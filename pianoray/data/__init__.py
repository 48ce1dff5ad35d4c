"""Data: caches and tiers (T1-T4), folds, labels and taxonomy, MIDI note tables, real-dataset loaders, demo corpus."""
