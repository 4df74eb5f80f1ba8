"""The pipeline's steps, as plain functions of (stack, config, day) that return what they did.

The Airflow DAGs run each as ``python -m <package> STEP`` (dags/); a laptop or a benchmark
can call them directly against the same stack. Data passes between steps through the stack
(the bucket, Postgres, Feast, MLflow, Label Studio), never through Airflow.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd

from . import drift, labeling, registry, sources
from .config import Config

# `model` (scikit-learn) and `schema` (pandera) are imported by the one step that needs each:
# every Airflow task is a fresh process, and those imports took 1.5 s of each task's start
# on a 2-core server (benchmarks/pipeline.py).

CHAMPION = registry.ALIAS  # the alias that marks the served model


# --------------------------------------------------------------------------- helpers


def feature_names(cfg: Config, frame: pd.DataFrame) -> list[str]:
    """The configured features, or every numeric column but the label and the entity."""
    if cfg.features:
        return list(cfg.features)
    skip = {cfg.label, cfg.entity, "event_date", "event_timestamp"}
    return [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]


def _part_url(stack, cfg: Config, kind: str, day: date) -> str:
    return stack.s3.url(cfg.bucket, f"{cfg.prefix(kind)}/date={day.isoformat()}/part-0.parquet")


def _check_bucket(stack, cfg: Config) -> None:
    if stack.s3.buckets and cfg.bucket not in stack.s3.buckets:
        raise ValueError(f"pipeline.yaml: bucket: {cfg.bucket!r} is not a bucket of the stack "
                         f"(allowed: {', '.join(stack.s3.buckets)}; more with mlox:services.seaweedfs.buckets)")


def _replace_day(frame: pd.DataFrame, table: str, engine, day: date) -> None:
    """The table's rows of ``day`` replaced by ``frame`` (a rerun of a day changes nothing)."""
    import sqlalchemy as sa

    with engine.begin() as conn:
        if sa.inspect(conn).has_table(table):
            conn.execute(sa.text(f'DELETE FROM "{table}" WHERE event_date = :day'), {"day": day.isoformat()})
        frame.to_sql(table, conn, if_exists="append", index=False)


def _clean_rows(stack, cfg: Config, day: date | None = None) -> pd.DataFrame:
    query = f'SELECT * FROM "{cfg.clean_table}"' + (" WHERE event_date = %(day)s" if day else "")
    engine = stack.postgres.engine()
    try:
        return pd.read_sql(query, engine, params={"day": day.isoformat()} if day else None)
    finally:
        engine.dispose()


def _champion(stack, cfg: Config):
    """(version, model, "cache" or "mlflow") of the current champion, or (None, None, None)
    (registry.py: the version over REST, the model from the local cache when a task before
    this one loaded it)."""
    return registry.champion(stack, cfg.model_name)


def _auc(estimator, frame: pd.DataFrame, features: list[str], label: str) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(frame[label], estimator.predict_proba(frame[features])[:, 1]))


def serving_requirements() -> list[str]:
    """What the model needs where it is served: the versions it was trained with, of the
    packages the pickled model refers to. pandas is left out on purpose: Feast pins this
    environment's pandas below 3, the stack's model server image has its own, and a model
    does not pickle pandas objects; pinning it would make the server download another."""
    from importlib.metadata import version

    names = ("mlflow", "scikit-learn", "numpy", "scipy", "cloudpickle", "skops")
    found = []
    for name in names:
        try:
            found.append(f"{name}=={version('mlflow-skinny' if name == 'mlflow' else name)}")
        except Exception:  # noqa: BLE001 (not installed: not needed)
            continue
    return found


def _post_rows(stack, cfg: Config, frame: pd.DataFrame) -> tuple[list, str]:
    """Score rows through the served model (the stack's proxy from outside, the Compose
    network inside); its predictions and the version that answered."""
    import requests

    served = stack.model(cfg.model_name)
    body = '{"dataframe_split": ' + frame.to_json(orient="split", index=False) + "}"
    answer = requests.post(served.url + "/invocations", data=body, headers=served.headers(),
                           verify=stack.settings.ca_file or True, timeout=120)
    if answer.status_code != 200:
        raise RuntimeError(f"{cfg.model_name} answered HTTP {answer.status_code}: {answer.text[:300]}")
    return answer.json()["predictions"], answer.headers.get("X-Model-Version", "")


# --------------------------------------------------------------------------- 1. collection


def ingest(stack, cfg: Config, day: date) -> dict[str, Any]:
    """The day's raw rows, from the source, as Parquet in ``<bucket>/<project>/raw/date=DAY/``."""
    _check_bucket(stack, cfg)
    frame = sources.load(cfg.source, day, cfg.rows_per_day, stack)
    features = feature_names(cfg, frame)
    frame = sources.shift(frame, features, cfg.shift)
    frame["event_date"] = day.isoformat()
    url = _part_url(stack, cfg, "raw", day)
    frame.to_parquet(url, storage_options=stack.s3.storage_options, index=False)
    return {"rows": len(frame), "url": url, "features": features, "shift": cfg.shift}


# --------------------------------------------------------------------------- 2. processing


def validate(stack, cfg: Config, day: date) -> dict[str, Any]:
    """The day's raw rows checked with pandera; the clean ones to Postgres and the bucket."""
    raw = pd.read_parquet(_part_url(stack, cfg, "raw", day), storage_options=stack.s3.storage_options)
    from . import schema

    features = feature_names(cfg, raw)
    clean, dropped = schema.validate(raw, features, cfg.label, cfg.entity)
    url = _part_url(stack, cfg, "clean", day)
    clean.to_parquet(url, storage_options=stack.s3.storage_options, index=False)
    engine = stack.postgres.engine()
    try:
        _replace_day(clean, cfg.clean_table, engine, day)
    finally:
        engine.dispose()
    return {"rows": len(clean), "dropped": dropped, "table": cfg.clean_table, "url": url}


# --------------------------------------------------------------------------- 3. features


def features(stack, cfg: Config, day: date) -> dict[str, Any]:
    """Feast: the feature view over the clean rows (in Feast's offline store), applied and
    materialized to the online store; a few entities read back online."""
    from feast import Entity, FeatureView, Field
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.types import Float64

    clean = _clean_rows(stack, cfg, day)
    names = feature_names(cfg, clean)
    start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
    table = f"{cfg.feature_view}_source"
    rows = clean[[cfg.entity, *names, "event_date"]].assign(event_timestamp=start)
    offline = stack.feast.config()["offline_store"]
    engine = stack.postgres.engine(offline["database"], user=offline["user"], password=offline["password"])
    try:
        _replace_day(rows, table, engine, day)
    finally:
        engine.dispose()
    entity = Entity(name=cfg.entity, join_keys=[cfg.entity])
    view = FeatureView(name=cfg.feature_view, entities=[entity], ttl=timedelta(days=cfg.feature_ttl_days),
                       schema=[Field(name=n, dtype=Float64) for n in names],
                       source=PostgreSQLSource(name=table, query=f'SELECT * FROM "{table}"',
                                               timestamp_field="event_timestamp"))
    store = stack.feast.store()
    store.apply([entity, view])
    store.materialize(start_date=start - timedelta(seconds=1), end_date=start + timedelta(days=1),
                      feature_views=[view.name])
    sample = [int(i) for i in clean[cfg.entity].head(5)]
    online = store.get_online_features(features=[f"{view.name}:{n}" for n in names],
                                       entity_rows=[{cfg.entity: i} for i in sample]).to_dict()
    missing = [i for i, v in zip(sample, online[names[0]]) if v is None]
    if missing:
        raise RuntimeError(f"Feast's online store has no features for {missing} after materializing {day}")
    return {"feature_view": view.name, "rows": len(rows), "features": names, "online_checked": len(sample)}


# --------------------------------------------------------------------------- 4. labeling


def merge_labels(stack, cfg: Config, day: date) -> dict[str, Any]:
    """Labels people gave in Label Studio, into the labels table the training reads."""
    studio = labeling.LabelStudio(stack)
    project = studio.project(cfg.label_project)
    rows = []
    if project is not None:
        for task in studio.tasks(project):
            label = labeling.label_of(task)
            if label is not None:
                rows.append({cfg.entity: int(task["data"]["entity"]), "event_date": task["data"]["event_date"],
                             cfg.label: label})
    frame = pd.DataFrame(rows, columns=[cfg.entity, "event_date", cfg.label])
    engine = stack.postgres.engine()
    try:
        frame.to_sql(cfg.labels_table, engine, if_exists="replace", index=False)
    finally:
        engine.dispose()
    return {"project": project, "labels": len(frame)}


def send_for_labeling(stack, cfg: Config, day: date) -> dict[str, Any]:
    """The day's rows the champion is least sure about, as Label Studio tasks (once each)."""
    version, champion, source = _champion(stack, cfg)
    if champion is None:
        return {"imported": 0, "reason": "no champion yet"}
    clean = _clean_rows(stack, cfg, day)
    names = feature_names(cfg, clean)
    probability = champion.predict_proba(clean[names])[:, 1]
    closeness = np.abs(probability - 0.5)
    picked = np.argsort(closeness)[: cfg.max_label_tasks]
    picked = [i for i in picked if closeness[i] <= cfg.uncertainty_band]
    studio = labeling.LabelStudio(stack)
    project = studio.project(cfg.label_project, create=True)
    known = {t["data"].get("key") for t in studio.tasks(project)}
    tasks = []
    for i in picked:
        row = clean.iloc[int(i)]
        key = f"{row['event_date']}:{int(row[cfg.entity])}"
        if key in known:
            continue
        tasks.append({"key": key, "entity": int(row[cfg.entity]), "event_date": row["event_date"],
                      "probability": f"{probability[i]:.3f}", "version": version,
                      "summary": ", ".join(f"{n}={row[n]:.3g}" for n in names)})
    imported = studio.add(project, tasks)
    return {"project": project, "imported": imported, "uncertain": len(picked), "tasks": len(known) + imported,
            "champion_from": source}


# --------------------------------------------------------------------------- 5./6. training


def training_data(stack, cfg: Config) -> tuple[pd.DataFrame, int]:
    """Every clean row, with the labels people gave replacing the recorded ones; how many did."""
    import sqlalchemy as sa

    data = _clean_rows(stack, cfg)
    engine = stack.postgres.engine()
    try:
        has_labels = sa.inspect(engine).has_table(cfg.labels_table)
        labels = pd.read_sql(f'SELECT * FROM "{cfg.labels_table}"', engine) if has_labels else pd.DataFrame()
    finally:
        engine.dispose()
    if labels.empty:
        return data, 0
    given = labels.drop_duplicates([cfg.entity, "event_date"], keep="last").rename(columns={cfg.label: "_given"})
    data = data.merge(given, on=[cfg.entity, "event_date"], how="left")
    merged = int(data["_given"].notna().sum())
    data[cfg.label] = data["_given"].fillna(data[cfg.label]).astype(int)
    return data.drop(columns="_given"), merged


def train(stack, cfg: Config, day: date) -> dict[str, Any]:
    """A grid search as nested MLflow runs; the best registered; ``champion`` moved to it only
    if it beats the current champion on the held-out rows."""
    from . import model

    mlflow = stack.mlflow.module()
    from mlflow.models import infer_signature

    data, human = training_data(stack, cfg)
    names = feature_names(cfg, data)
    bucket = sources.stable_bucket(data[cfg.entity])
    cut = int(cfg.heldout_share * 100)
    heldout, valid, fit = data[bucket < cut], data[(bucket >= cut) & (bucket < cut + 20)], data[bucket >= cut + 20]
    mlflow.set_experiment(cfg.project)
    client = stack.mlflow.client()
    with mlflow.start_run(run_name=f"train-{day.isoformat()}") as parent:
        mlflow.log_params({"date": day.isoformat(), "model": cfg.model, "rows": len(data), "features": ",".join(names)})
        mlflow.log_metric("human_labels", human)
        results = []
        for params in model.grid(cfg.search):
            with mlflow.start_run(run_name=" ".join(f"{k}={v}" for k, v in params.items()), nested=True):
                estimator = model.build(cfg.model, params).fit(fit[names], fit[cfg.label])
                score = _auc(estimator, valid, names, cfg.label)
                mlflow.log_params(params)
                mlflow.log_metric("val_auc", score)
                results.append((score, params, estimator))
        best_score, best_params, best = max(results, key=lambda r: r[0])
        heldout_auc = _auc(best, heldout, names, cfg.label)
        mlflow.log_params({f"best_{k}": v for k, v in best_params.items()})
        mlflow.log_metrics({"best_val_auc": best_score, "heldout_auc": heldout_auc})
        example = fit[names].head(5)
        info = mlflow.sklearn.log_model(best, name="model", registered_model_name=cfg.model_name,
                                        skops_trusted_types=model.TRUSTED_TYPES[cfg.model],
                                        signature=infer_signature(example, best.predict(example)),
                                        pip_requirements=serving_requirements())
        version = str(info.registered_model_version)
        registered = client.get_model_version(cfg.model_name, version)
        # The tasks after this one load the new version from the cache, not from MLflow.
        registry.save(registry.Version(cfg.model_name, version, int(registered.creation_timestamp or 0)), best)
        champion_version, champion, _ = _champion(stack, cfg)
        champion_auc = _auc(champion, heldout, names, cfg.label) if champion is not None else None
        promoted = champion is None or heldout_auc > champion_auc + cfg.min_improvement
        if champion_auc is not None:
            mlflow.log_metric("champion_heldout_auc", champion_auc)
        mlflow.set_tag("promoted", str(promoted).lower())
        client.set_model_version_tag(cfg.model_name, version, "heldout_auc", f"{heldout_auc:.6f}")
        client.set_model_version_tag(cfg.model_name, version, "promoted", str(promoted).lower())
        # What monitoring compares the served version's requests with: its training rows.
        reference = fit[names].sample(min(len(fit), 5000), random_state=0)
        reference.to_parquet(stack.s3.url(cfg.bucket, f"{cfg.prefix('reference')}/v{version}.parquet"),
                             storage_options=stack.s3.storage_options, index=False)
        if promoted:
            client.set_registered_model_alias(cfg.model_name, CHAMPION, version)
    return {"run_id": parent.info.run_id, "version": version, "params": best_params, "heldout_auc": round(heldout_auc, 4),
            "champion_version": champion_version,
            "champion_heldout_auc": None if champion_auc is None else round(champion_auc, 4),
            "promoted": promoted, "human_labels": human, "candidates": len(results)}


# --------------------------------------------------------------------------- 7. deployment


def deploy_check(stack, cfg: Config, day: date) -> dict[str, Any]:
    """The served model answers with the champion's version, and as the champion does locally."""
    version, champion, source = _champion(stack, cfg)
    if champion is None:
        raise RuntimeError(f"{cfg.model_name} has no {CHAMPION} alias: nothing to serve")
    sample = _clean_rows(stack, cfg, day)
    names = feature_names(cfg, sample)
    sample = sample[names].head(5)
    started, deadline, last = time.monotonic(), time.monotonic() + cfg.serving_timeout_s, ""
    while True:
        try:
            predictions, served = _post_rows(stack, cfg, sample)
            if served == version:
                break
            last = f"version {served} answered"
        except Exception as error:  # noqa: BLE001 (not served yet: retried until the deadline)
            last = str(error)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{cfg.model_name} did not serve version {version} within {cfg.serving_timeout_s:.0f}s "
                               f"({last})")
        time.sleep(1)
    expected = [int(p) for p in champion.predict(sample)]
    if [int(p) for p in predictions] != expected:
        raise RuntimeError(f"served predictions {predictions} differ from the champion's own {expected}")
    return {"version": version, "url": stack.model(cfg.model_name).url, "waited_s": round(time.monotonic() - started, 1),
            "champion_from": source}


def score_batch(stack, cfg: Config, day: date) -> dict[str, Any]:
    """The day's rows scored through the served model (which samples them into its request
    log for monitoring); the predictions kept in Postgres."""
    clean = _clean_rows(stack, cfg, day).head(cfg.score_rows)
    names = feature_names(cfg, clean)
    out, versions = [], Counter()
    for start in range(0, len(clean), 50):
        chunk = clean.iloc[start:start + 50]
        predictions, version = _post_rows(stack, cfg, chunk[names])
        versions[version] += len(chunk)
        out.append(pd.DataFrame({cfg.entity: chunk[cfg.entity].to_numpy(), "event_date": chunk["event_date"].to_numpy(),
                                 "prediction": [int(p) for p in predictions], "version": version}))
    frame = pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    engine = stack.postgres.engine()
    try:
        _replace_day(frame, cfg.predictions_table, engine, day)
    finally:
        engine.dispose()
    return {"rows": len(frame), "versions": dict(versions), "table": cfg.predictions_table}


# --------------------------------------------------------------------------- 8. monitoring


def request_log(stack, cfg: Config, since: datetime) -> list[str]:
    """The model server's sampled requests since ``since`` (JSON lines from the bucket)."""
    s3 = stack.s3.client()
    lines: list[str] = []
    day = since.date()
    while day <= datetime.now(timezone.utc).date():
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.request_log_bucket,
                                                              Prefix=f"{cfg.model_name}/{day.isoformat()}/")
        for page in pages:
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=cfg.request_log_bucket, Key=item["Key"])["Body"].read().decode()
                lines += [line for line in body.splitlines() if line.strip()]
        day += timedelta(days=1)
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    return [line for line in lines if line.split('"time": "', 1)[-1][:20] >= stamp]


def monitor(stack, cfg: Config, day: date) -> dict[str, Any]:
    """Drift per feature of the served requests against the training rows of the version that
    answered them; the result as Prometheus metrics (alert FeatureDrift above the threshold)."""
    now = datetime.now(timezone.utc)
    lines = request_log(stack, cfg, now - timedelta(minutes=cfg.monitor_minutes))
    found, reference = registry.current(stack, cfg.model_name), None
    version = found.version if found else None
    names: list[str] = []
    if version is not None:
        reference = pd.read_parquet(stack.s3.url(cfg.bucket, f"{cfg.prefix('reference')}/v{version}.parquet"),
                                    storage_options=stack.s3.storage_options)
        names = list(reference.columns)
    current, versions = drift.requests_frame(lines, names)
    if versions:  # compare with the version that answered most of them
        answered = Counter(versions).most_common(1)[0][0]
        if answered != version:
            version = answered
            reference = pd.read_parquet(stack.s3.url(cfg.bucket, f"{cfg.prefix('reference')}/v{version}.parquet"),
                                        storage_options=stack.s3.storage_options)
    scores = drift.per_feature(reference, current, names, cfg.drift_bins) if len(current) else {}
    text = drift.prometheus_text(cfg.project, cfg.model_name, scores, cfg.drift_threshold, len(current), time.time())
    folder = os.environ.get("MLOX_METRICS_DIR")
    written = str(drift.write_metrics(folder, cfg.project, text)) if folder and os.path.isdir(folder) else None
    return {"rows": len(current), "version": version, "drift": scores, "threshold": cfg.drift_threshold,
            "drifted": sorted(n for n, v in scores.items() if v > cfg.drift_threshold), "metrics_file": written}


# The training DAG's order; the monitoring DAG runs ``monitor``.
PIPELINE = (ingest, validate, features, merge_labels, train, deploy_check, send_for_labeling, score_batch)
STEPS = {step.__name__: step for step in (*PIPELINE, monitor)}
