"""Training: the Lightning module, self-describing checkpoints, run folders and the `train` entry point."""
