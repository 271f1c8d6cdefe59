"""The on-disk artifacts several stages share, each one module that both writes and reads it:

* :mod:`.calib_cache` -- the TensorRT calibration cache (``calibration.cache``);
* :mod:`.calib_dir` -- the calibration directory, written and checked as one set (``summary.json`` last);
* :mod:`.plan` -- the resolved precision plan (``plan.json``);
* :mod:`.engine_manifest` -- the engine directory's ``manifest.json`` (writer: the builder; reader: the runtime).

They import only the core (errors, fsutil, vocab, versions): every stage may import them, they import no stage.
"""
