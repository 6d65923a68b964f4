"""Sweeps: the resumable Optuna sweep loop, the trial a job runs for, and multirun summaries."""
