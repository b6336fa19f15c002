"""carspotter: train, compare and ship small, fast car make/model/year recognisers."""

from carspotter.environment import set_process_defaults

__version__ = "0.1.0"

set_process_defaults()  # before any submodule imports torch, ONNX Runtime or MLflow: no telemetry, no temp leftovers
