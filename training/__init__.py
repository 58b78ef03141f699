"""Data, episodes, training, evaluation and export for MetaNet on Omniglot."""
