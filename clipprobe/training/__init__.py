"""Training: the LightningModule, the probe callback, loggers, SLURM requeue and the fit/validate commands."""
