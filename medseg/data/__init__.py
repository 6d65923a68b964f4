"""Data: layout readers, case splits, MONAI transforms and loaders."""
