"""Layer-by-layer SNN calibration: the sweep and its techniques (not passes themselves).

The pass that drives them is ``converter_passes/calibrate_layers.py``.
"""
