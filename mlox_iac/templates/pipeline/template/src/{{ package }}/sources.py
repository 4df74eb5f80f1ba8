"""1. Collection: the raw data of one date from the configured source.

``generator[:seed=N]`` makes a customer table with a churn label from a seed (no internet);
``sklearn:breast_cancer`` is a table scikit-learn ships; ``s3://bucket/key`` and
``https://...`` read a Parquet or CSV file (for real use).
"""

from __future__ import annotations

import re
import zlib
from datetime import date

import numpy as np
import pandas as pd

GENERATOR_FEATURES = ("tenure_months", "monthly_charges", "support_calls", "usage_hours", "late_payments")


def generate(day: date, rows: int, seed: int = 7) -> pd.DataFrame:
    """A seeded churn table for ``day``: same seed and day, same rows. About 1 % of the rows
    are broken on purpose (a missing charge, a negative tenure) for the validation to catch."""
    rng = np.random.default_rng([seed, day.toordinal()])
    tenure = rng.gamma(2.0, 12.0, rows)
    charges = rng.normal(70.0, 20.0, rows).clip(5, None)
    calls = rng.poisson(1.5, rows).astype(float)
    usage = rng.gamma(3.0, 10.0, rows)
    late = rng.poisson(0.5, rows).astype(float)
    score = -1.0 - 0.06 * tenure + 0.02 * charges + 0.6 * calls - 0.03 * usage + 0.8 * late
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-score))).astype(int)
    frame = pd.DataFrame({
        "entity_id": day.toordinal() * 100_000 + np.arange(rows),
        "tenure_months": tenure, "monthly_charges": charges, "support_calls": calls,
        "usage_hours": usage, "late_payments": late, "label": label,
    })
    broken = rng.choice(rows, size=max(1, rows // 100), replace=False)
    half = len(broken) // 2
    frame.loc[broken[:half], "monthly_charges"] = np.nan
    frame.loc[broken[half:], "tenure_months"] = -1.0
    return frame


def _sklearn(name: str, day: date) -> pd.DataFrame:
    from sklearn import datasets

    if name != "breast_cancer":
        raise ValueError(f"source sklearn:{name}: unknown table (allowed: sklearn:breast_cancer)")
    bunch = datasets.load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "label"})
    frame.insert(0, "entity_id", day.toordinal() * 100_000 + np.arange(len(frame)))
    return frame


def _read(url: str, storage_options: dict | None = None) -> pd.DataFrame:
    if url.endswith(".parquet"):
        return pd.read_parquet(url, storage_options=storage_options)
    return pd.read_csv(url, storage_options=storage_options)


def clean_names(frame: pd.DataFrame) -> pd.DataFrame:
    """Column names as SQL and Feast like them: lowercase letters, digits and underscores."""
    return frame.rename(columns=lambda c: re.sub(r"[^a-z0-9_]+", "_", str(c).strip().lower()).strip("_"))


def load(source: str, day: date, rows: int, stack=None) -> pd.DataFrame:
    """The raw rows of ``day`` from ``source`` (see the module's docstring)."""
    if source.startswith("generator"):
        match = re.fullmatch(r"generator(?::seed=(\d+))?", source)
        if not match:
            raise ValueError(f"source {source}: allowed: generator or generator:seed=N")
        return generate(day, rows, int(match.group(1) or 7))
    if source.startswith("sklearn:"):
        return clean_names(_sklearn(source.partition(":")[2], day))
    if source.startswith("s3://"):
        return clean_names(_read(source, stack.s3.storage_options if stack is not None else None))
    if source.startswith(("https://", "http://")):
        return clean_names(_read(source))
    raise ValueError(f"source {source}: allowed: generator[:seed=N], sklearn:breast_cancer, s3://..., https://...")


def shift(frame: pd.DataFrame, features: list[str], amount: float) -> pd.DataFrame:
    """Every feature moved by ``amount`` of its own standard deviation (a known drift)."""
    if not amount:
        return frame
    frame = frame.copy()
    for name in features:
        frame[name] = frame[name] + amount * float(frame[name].std())
    return frame


def stable_bucket(ids: pd.Series) -> np.ndarray:
    """0..99 per entity, the same on every run and machine (held-out and validation splits)."""
    return np.array([zlib.crc32(str(i).encode()) % 100 for i in ids])
