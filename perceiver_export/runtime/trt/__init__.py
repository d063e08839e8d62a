"""TensorRT backend (datacenter TensorRT or TensorRT-RTX)."""
