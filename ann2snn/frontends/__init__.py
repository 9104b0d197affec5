"""Frontends: anything a user hands over (checkpoint, ``.pt2``, ``.onnx``) -> ``nn.Module``."""
