"""What each `mode=` does: train, evaluate, predict, benchmark, lr_find."""
