"""The pipeline's settings: ``pipeline.yaml`` beside this file, plus a run's overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = Path(__file__).with_name("pipeline.yaml")


@dataclass(frozen=True)
class Config:
    """Everything a step needs to know besides the stack (which mlox-client finds)."""

    project: str
    model_name: str
    stack: str
    source: str
    bucket: str
    rows_per_day: int
    shift: float
    clean_table: str
    label: str
    entity: str
    features: list[str] | None
    feature_view: str
    feature_ttl_days: int
    label_project: str
    uncertainty_band: float
    max_label_tasks: int
    labels_table: str
    model: str
    search: dict[str, list[Any]]
    heldout_share: float
    min_improvement: float
    serving_timeout_s: float
    score_rows: int
    predictions_table: str
    drift_threshold: float
    drift_bins: int
    monitor_minutes: float
    request_log_bucket: str

    def prefix(self, kind: str) -> str:
        """The bucket prefix of a kind of data (raw, clean, reference)."""
        return f"{self.project}/{kind}"


def load(overrides: dict[str, Any] | None = None, path: Path = CONFIG_FILE) -> Config:
    """The settings file, with a run's ``overrides`` (unknown keys are an error, naming them)."""
    values = yaml.safe_load(path.read_text()) or {}
    values.update(overrides or {})
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path.name}: unknown setting(s) {', '.join(unknown)} (allowed: {', '.join(sorted(known))})")
    missing = sorted(known - set(values))
    if missing:
        raise ValueError(f"{path.name}: missing setting(s) {', '.join(missing)}")
    return Config(**values)
