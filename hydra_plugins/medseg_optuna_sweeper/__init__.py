"""medseg's Optuna sweeper for Hydra (resumable studies, failed and pruned trials); see docs/scaling.md.

Hydra only instantiates plugins defined under the `hydra_plugins` namespace package, so the class
lives here; the logic lives in medseg/sweeps/optuna_sweeper.py.
"""
