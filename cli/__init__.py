"""ann2snn.cli."""
