# Test double shim (tests/doubles): like pycuda.autoinit (here: the primary context), pushes device 0's primary context.
from tests.doubles import install_from_env

install_from_env("pycuda.autoinit")
