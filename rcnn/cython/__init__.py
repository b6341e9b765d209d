"""Compiled operations, built in place by ``make`` (``setup.py build_ext --inplace``).

``bbox``, ``anchors`` and ``cpu_nms`` are always built; ``gpu_nms`` only when a CUDA toolkit was found.
"""
