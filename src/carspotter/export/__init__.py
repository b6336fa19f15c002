"""Exported models: ONNX (fp32 and int8) for ONNX Runtime, and ExecuTorch `.pte` programs for phones.

Each format has its own module with an ``export(...)`` function; what an exported file carries about itself is
`carspotter.formats.metadata` (torch-free), so that `carspotter.serve` can use it without the checkpoint or PyTorch.
Each export is checked against its checkpoint through `carspotter.inference`.
"""
