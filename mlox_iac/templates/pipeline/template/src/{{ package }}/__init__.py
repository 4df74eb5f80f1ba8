"""A runnable ML pipeline on an mlox stack: ingest, validate, features, labels, train, serve, monitor.

Every step is a plain function in :mod:`.steps`; the Airflow DAGs in ``dags/`` run them with
``python -m <package> STEP``, and so can you, from a laptop, against the same stack.
"""

__version__ = "0.1.0"
