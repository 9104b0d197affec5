"""ann2snn.models."""
