"""Experiment trackers: each config under `logger:` becomes one tracker object.

    python run.py                                  # wandb, offline: <run folder>/wandb/offline-run-*
    python run.py logger=[wandb,csv,tensorboard]   # several at once
    python run.py logger.wandb.mode=online         # or WANDB_MODE=online, after `wandb login`
    python run.py logger=none                      # history.json, history.png and run.log only
    python run.py -m optimizer.lr=1e-3,1e-4        # one wandb run per job, grouped by the sweep folder

A resumed training (ckpt=... trainer.resume=true) continues the same wandb run (its id travels in the
checkpoint under `tracker_ids`, checked to be a plain id) and the csv table (rebuilt from the
checkpoint's history; no file named in a checkpoint is read). Trackers receive the resolved config with secrets
masked (medseg.config.redact), per-step and per-epoch metrics, image panels (trainer.log_images_*),
optional histograms (trainer.log_histograms_every_n_epochs) and a summary with the best monitored
value and its epoch. medseg.tracking.wandb_offline reads an offline run without syncing it.
"""
