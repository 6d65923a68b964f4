"""From fold runs to the best model: out-of-fold predictions, ensembles and post-processing (docs/crossval.md)."""
