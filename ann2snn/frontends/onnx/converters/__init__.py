"""The ONNX converters, one module per op family; importing this package registers them all.

Each module decorates its converter functions with
:func:`ann2snn.frontends.onnx.registry._converter`. To add an op, put its converter in the
module of its family (or a new module imported here).
"""

from ann2snn.frontends.onnx.converters import arithmetic, layers, pooling, shapes

__all__ = ["arithmetic", "layers", "pooling", "shapes"]
