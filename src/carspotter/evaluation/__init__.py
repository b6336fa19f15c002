"""Evaluation: accuracy of trained checkpoints (metrics) and size/compute/latency of architectures (profile, timing)."""
