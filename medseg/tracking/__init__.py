"""Experiment trackers: each config under `logger:` becomes one tracker object."""
