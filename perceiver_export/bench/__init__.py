"""bench: latency, throughput, memory and FLOP/s of every backend that runs here, over a grid of shapes."""
