"""Serving exported models through ONNX Runtime: no PyTorch import anywhere in this package."""
