# Test double shim (tests/doubles): becomes the tensorrt double chosen by $VQZ_DOUBLE_TRT.
from tests.doubles import install_from_env

install_from_env("tensorrt")
