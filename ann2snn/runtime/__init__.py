"""What a converted graph is made of and how it runs over time.

``temporal`` holds the one contract for modules that live in time, ``neuron`` /
``pooling`` / ``affine`` the modules, ``spiking_model`` the :class:`SpikingModel` that
simulates them.
"""
