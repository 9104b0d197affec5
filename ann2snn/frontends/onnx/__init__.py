"""ONNX frontend: an ONNX graph -> an ``nn.Module`` of standard torch layers."""
