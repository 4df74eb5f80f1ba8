"""2. Processing: the clean table's schema, checked with pandera; failing rows are dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

# Known bounds of the generator's columns; other sources get the generic checks only.
BOUNDS = {"tenure_months": (0, 600), "monthly_charges": (0, 10_000), "support_calls": (0, 1_000),
          "usage_hours": (0, 10_000), "late_payments": (0, 1_000)}


def schema(features: list[str], label: str, entity: str) -> pa.DataFrameSchema:
    """Features: finite floats (within BOUNDS where known); the label 0 or 1; the entity an integer."""
    columns = {entity: pa.Column(int, coerce=True), label: pa.Column(int, pa.Check.isin([0, 1]), coerce=True),
               "event_date": pa.Column(str)}
    for name in features:
        checks = [pa.Check(lambda s: np.isfinite(s.astype(float)), name="finite")]
        if name in BOUNDS:
            checks.append(pa.Check.in_range(*BOUNDS[name]))
        columns[name] = pa.Column(float, checks, coerce=True, nullable=False)
    return pa.DataFrameSchema(columns, strict="filter", unique=[entity])


def validate(frame: pd.DataFrame, features: list[str], label: str, entity: str) -> tuple[pd.DataFrame, int]:
    """The rows that pass, and how many did not. A problem with a whole column is raised."""
    checked = schema(features, label, entity)
    try:
        return checked.validate(frame, lazy=True), 0
    except SchemaErrors as errors:
        cases = errors.failure_cases
        if cases["index"].isna().any():  # a column is missing or of the wrong type: nothing to drop
            raise
        bad = set(cases["index"].dropna().astype(int))
        good = frame.drop(index=list(bad))
        return checked.validate(good, lazy=True), len(bad)
