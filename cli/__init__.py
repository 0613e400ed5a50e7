"""The ``vigil`` command line and the demo: the top layer, the only one that imports every other."""
