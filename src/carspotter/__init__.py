"""carspotter: train, compare and ship small, fast car make/model/year recognisers."""

__version__ = "0.1.0"
