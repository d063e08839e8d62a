"""PyTorch eager backend."""
