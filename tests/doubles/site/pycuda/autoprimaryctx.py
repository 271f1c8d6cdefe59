# Test double shim (tests/doubles): like pycuda.autoprimaryctx, pushes device 0's primary context.
from tests.doubles import install_from_env

install_from_env("pycuda.autoprimaryctx")
