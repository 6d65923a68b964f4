"""Inference: forward passes on slices, windows and whole volumes."""
