"""ann2snn.converter_passes."""
