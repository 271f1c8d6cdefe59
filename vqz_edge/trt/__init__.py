"""Everything that touches TensorRT or pycuda lives in this package, imported lazily.

``import vqz_edge.trt`` never imports tensorrt; call :func:`vqz_edge.trt.compat.import_tensorrt`
inside the functions that need it. This package is type-checked with ``mypy --strict`` against
``tensorrt-stubs``.
"""
