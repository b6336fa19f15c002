"""Defaults that the config and the commands share, written once; importable without NumPy or torch (the CLI's
start-up reads them for its --help)."""

from __future__ import annotations

# The thesis's input size (height, width): the default of data.image_size and of every command that resizes photos.
DEFAULT_IMAGE_SIZE = (227, 227)

# `enroll`: the share of the reference photos (the old classes' own) the new classes may take from the old ones.
ENROLL_MAX_OLD_LOSS = 0.01
