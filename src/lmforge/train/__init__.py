"""Training: one loop; objectives, optimizers, schedules and checkpoints plug into it."""
