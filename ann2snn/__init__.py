"""ann2snn: convert trained ReLU networks into spiking neural networks."""
