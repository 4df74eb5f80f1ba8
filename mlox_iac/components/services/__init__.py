"""One module per MLOps service; see ``base.py`` for what a service module defines."""
