"""TensorRT engines: build from the exported ONNX, profiles from the contract, compatibility checks."""
