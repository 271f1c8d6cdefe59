"""vqz-edge: take a PyTorch vision model to a mixed-precision TensorRT engine on Jetson Orin.

Library code logs through ``logging.getLogger("vqz_edge...")`` and never prints; the CLI prints.
Nothing here imports torch, onnxruntime, tensorrt or pycuda at import time.
"""

__version__ = "0.1.0"
