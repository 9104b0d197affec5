"""Training after conversion: bootstrap fine-tuning and its piecewise-linear activations.

Named ``training`` rather than ``bootstrap`` so that ``ann2snn.bootstrap`` stays the
public function.
"""
