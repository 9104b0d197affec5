"""ONNX frontend: an ONNX graph -> an ``nn.Module`` of standard torch layers."""

from ann2snn.frontends.onnx.importer import import_onnx

__all__ = ["import_onnx"]
