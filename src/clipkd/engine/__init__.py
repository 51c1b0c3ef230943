"""Training engine: optimizer and schedule, precision, checkpoints, logging, the training loop."""
