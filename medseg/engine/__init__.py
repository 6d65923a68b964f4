"""Training engine: the loop, its callbacks, metrics, schedules and checkpoints."""
