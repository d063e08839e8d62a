"""ONNX reference-evaluator backend."""
