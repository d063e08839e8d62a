"""OpenVINO backend (CPU; float32, or bfloat16 inference precision where the CPU has bf16 instructions)."""
