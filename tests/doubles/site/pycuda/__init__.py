# Test double shim (tests/doubles): the pycuda package; its driver is the pycuda double.
