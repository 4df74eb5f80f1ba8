"""The ``mlox-iac`` command line: one module per noun, assembled in ``main.py``."""
