"""What writers and readers share, at the bottom of the package: the checkpoint layout (`checkpoint`), the
metadata every export carries (`metadata`), the files of a run folder (`run_dir`) and file fingerprints (`files`).

Imports no model, training, export or inference code; `metadata` and `run_dir` import no torch either (the ONNX
serving path and the run-reading commands start without it).
"""
