"""5. Model design: the estimators the pipeline can train, built from ``pipeline.yaml``'s
``model`` and a point of its ``search`` grid."""

from __future__ import annotations

import itertools
from typing import Any

from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def _forest(**params):
    return RandomForestClassifier(random_state=0, n_jobs=1, **params)


def _boosting(**params):
    return HistGradientBoostingClassifier(random_state=0, **params)


def _logistic(**params):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, **params))


MODELS = {"random_forest": _forest, "gradient_boosting": _boosting, "logistic_regression": _logistic}

# MLflow saves scikit-learn models with skops, which loads only the types it is told to trust.
# These are scikit-learn's own tree storage, in models this project trains itself (skops
# reports exactly these as untrusted for each family; tests/test_model.py checks that).
TRUSTED_TYPES = {
    "random_forest": ["sklearn.tree._tree.Tree"],
    "gradient_boosting": ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
    "logistic_regression": [],
}


def build(name: str, params: dict[str, Any]):
    """An unfitted estimator."""
    if name not in MODELS:
        raise ValueError(f"model: {name!r} is not known (allowed: {', '.join(MODELS)})")
    return MODELS[name](**params)


def grid(search: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of the search grid, in a stable order."""
    keys = sorted(search)
    return [dict(zip(keys, values)) for values in itertools.product(*(search[k] for k in keys))]
