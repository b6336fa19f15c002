"""Exported models: ONNX (fp32 and int8) for ONNX Runtime, and ExecuTorch `.pte` programs for phones.

Each format has its own module with an ``export(...)`` function; `metadata` (torch-free) says what an exported file
carries so that `carspotter.serve` can use it without the checkpoint or PyTorch.
"""
