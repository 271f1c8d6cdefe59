# Test double shim (tests/doubles): becomes the pycuda.driver double on $VQZ_DOUBLE_GPU.
from tests.doubles import install_from_env

install_from_env("pycuda.driver")
