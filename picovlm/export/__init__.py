"""Export to ONNX (+ int8) for the torch-free runtime: see `picovlm.export.onnx` and docs/deploy.md."""
