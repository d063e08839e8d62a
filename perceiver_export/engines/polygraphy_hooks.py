"""Builder-config hooks for Polygraphy (`--trt-config-postprocess-script this.py:FUNC`), where it has no flag of its own.

Polygraphy loads this file by path; it imports nothing from this package.
"""

import sys


def tf32_off(builder, network, config):
    """Clear TF32 as `trt` does by default: Polygraphy's TensorRT-RTX config leaves the builder's default (on)."""
    trt = sys.modules[type(config).__module__]  # tensorrt's or tensorrt_rtx's bindings, whichever built the config
    config.clear_flag(trt.BuilderFlag.TF32)
