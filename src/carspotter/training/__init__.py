"""Training: the Lightning module, its callbacks and loggers, the optimizer and schedule, and the `train` entry point
(what a checkpoint and a run folder hold: `carspotter.formats`)."""
