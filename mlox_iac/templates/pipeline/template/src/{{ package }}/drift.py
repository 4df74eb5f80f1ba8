"""8. Monitoring: drift of live requests against the training data, and its Prometheus metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``: 0 for the same
    distribution, above 0.25 a large shift (the usual reading). The bins split the
    reference's quantiles halfway, so a feature of few values (counts) gets one bin per value."""
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    if len(reference) == 0 or len(current) == 0:
        return float("nan")
    points = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    edges = np.concatenate(([-np.inf], (points[:-1] + points[1:]) / 2, [np.inf]))
    expected = np.histogram(reference, edges)[0] / len(reference)
    actual = np.histogram(current, edges)[0] / len(current)
    expected, actual = np.clip(expected, 1e-4, None), np.clip(actual, 1e-4, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def per_feature(reference: pd.DataFrame, current: pd.DataFrame, features: list[str], bins: int = 10) -> dict[str, float]:
    return {name: round(psi(reference[name].to_numpy(), current[name].to_numpy(), bins), 6) for name in features}


def requests_frame(lines: list[str], features: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The feature rows of the model server's sampled request log (JSON lines), and the
    versions that answered them. Records that are not a successful scoring request are skipped."""
    rows, versions = [], []
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("status") != 200 or not str(record.get("path", "")).startswith("/invocations"):
            continue
        body = json.loads(record["request"])
        split = body.get("dataframe_split")
        if split is None:
            continue
        frame = pd.DataFrame(split["data"], columns=split["columns"])
        if set(features) <= set(frame.columns):
            rows.append(frame[features])
            versions += [str(record.get("version"))] * len(frame)
    if not rows:
        return pd.DataFrame(columns=features), []
    return pd.concat(rows, ignore_index=True).astype(float), versions


def prometheus_text(pipeline: str, model: str, drift: dict[str, float], threshold: float, rows: int,
                    now: float) -> str:
    """The textfile collector's format: what node-exporter serves to Prometheus."""
    labels = f'pipeline="{pipeline}",model="{model}"'
    out = ["# HELP mlox_feature_drift_psi Population stability index of a feature: served requests vs training data",
           "# TYPE mlox_feature_drift_psi gauge"]
    out += [f'mlox_feature_drift_psi{{{labels},feature="{name}"}} {value:g}'
            for name, value in sorted(drift.items()) if value == value]
    out += ["# HELP mlox_feature_drift_threshold Above it the alert FeatureDrift fires",
            "# TYPE mlox_feature_drift_threshold gauge", f"mlox_feature_drift_threshold{{{labels}}} {threshold:g}",
            "# HELP mlox_feature_drift_rows Requests the last drift check read",
            "# TYPE mlox_feature_drift_rows gauge", f"mlox_feature_drift_rows{{{labels}}} {rows}",
            "# HELP mlox_feature_drift_timestamp_seconds When the last drift check ran",
            "# TYPE mlox_feature_drift_timestamp_seconds gauge",
            f"mlox_feature_drift_timestamp_seconds{{{labels}}} {now:.0f}"]
    return "\n".join(out) + "\n"


def write_metrics(directory: str | os.PathLike, pipeline: str, text: str) -> Path:
    """Replace ``<dir>/pipeline_<name>.prom`` atomically (node-exporter never reads half a file)."""
    folder = Path(directory)
    target = folder / f"pipeline_{pipeline.replace('-', '_')}.prom"
    part = folder / f".{target.name}.part"
    part.write_text(text)
    os.replace(part, target)
    return target
