"""Monitoring: Prometheus, its exporters and Alertmanager; dashboards and alerts.

What is measured, and by what:

- the host: node-exporter (CPU, memory, disks, the data volume), with its textfile
  collector reading ``/opt/mlox/metrics/*.prom`` on the host (where other jobs, such as
  backups, leave ``mlox_backup_last_success_timestamp_seconds`` and
  ``mlox_backup_last_status``);
- every container: ``container-metrics``, a small exporter of ours
  (``programs/container_metrics.py``) reading Docker's container files and cgroups
  read-only. cAdvisor is not installable here, Docker's own ``metrics-addr`` reports only
  the engine, and both a socket-reading exporter and cAdvisor want the Docker socket or
  more of the host; ours needs neither and runs in the MLflow image's Python, already on
  the server;
- each route: Caddy's request metrics (rate, latency, status codes; ``per_host``, so per
  route with a domain; on the bare address all routes share one host label);
- Postgres: postgres-exporter (as the superuser; the exporter only reads statistics);
- the model endpoints: the model server's own ``/metrics`` (requests, latency, errors and
  the served version per model);
- certificates: blackbox-exporter probes every public route over HTTPS
  (``probe_ssl_earliest_cert_expiry``).

Dashboards: Prometheus' own UI and a console page (``/consoles/mlox.html``) rendered by
Prometheus itself. Grafana is what users expect, but no copy of it can be installed where
this project is built and tested, so dashboards we could not run would be untested
promises; Prometheus' UI and consoles are in the pinned image and tested end to end.

Alerts go to Alertmanager, which sends them to the webhook and/or e-mail address set
under ``alerts``. The upstream images are pinned at the versions Debian 12 ships
(Prometheus 2.42, Alertmanager 0.25, node-exporter 1.5, postgres-exporter 0.11.1,
blackbox-exporter 0.23), which are also what the tests run.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from mlox_iac.components.services import programs
from mlox_iac.components.services.base import (
    Context, Data, Face, MLOX_DIR, Managed, Route, Service, ServiceComponent, ServiceSettings,
    digest, hc, http_check, limits, provisioner,
)

if TYPE_CHECKING:
    import pulumi

NAME = "monitoring"
IMAGE = "prom/prometheus:v2.42.0"
PROMETHEUS_MB = 256  # a few thousand series at a 15 s interval
# The server must hold Prometheus and every long-running helper below (Alertmanager and the
# exporters, 64 + 64 + 48 + 64 + 64); the contract test checks the sum against their limits.
MEMORY_MB = PROMETHEUS_MB + 64 + 64 + 48 + 64 + 64
ALERTMANAGER_IMAGE = "prom/alertmanager:v0.25.0"
NODE_EXPORTER_IMAGE = "prom/node-exporter:v1.5.0"
POSTGRES_EXPORTER_IMAGE = "quay.io/prometheuscommunity/postgres-exporter:v0.11.1"
BLACKBOX_IMAGE = "prom/blackbox-exporter:v0.23.0"
TEXTFILE_DIR = f"{MLOX_DIR}/metrics"  # on the host: *.prom files other jobs write
NOBODY = "65534:65534"  # the user of every Prometheus image
SCRAPE_INTERVAL = "15s"
# Status codes that show a route answered through the proxy (most routes ask for auth).
_ANSWERED = [200, 301, 302, 307, 308, 401, 403, 404, 405]


class Email(BaseModel):
    """Where alert e-mails go, through which SMTP server."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="Recipient address")
    sender: str = Field(description="From address")
    smarthost: str = Field(pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$", description="SMTP server as host:port")
    username: str | None = Field(None, description="SMTP user, if the server wants one")
    password: SecretStr | None = Field(None, description="SMTP password (must be a Pulumi secret)")
    require_tls: bool = Field(True, description="Use STARTTLS")

    @field_validator("to", "sender")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value


class Alerts(BaseModel):
    """Where alerts are sent (none set: visible in Alertmanager's UI only)."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(None, description="URL that receives Alertmanager's webhook JSON")
    email: Email | None = None

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"{value!r} is not an http(s) URL (allowed: e.g. https://hooks.example.com/mlox)")
        return value


class Settings(ServiceSettings):
    """Prometheus, exporters and Alertmanager: metrics, dashboards and alerts."""

    retention_days: int = Field(30, ge=1, le=3650, description="Keep metrics this long ...")
    retention_gb: int | None = Field(None, ge=1, le=1000,
                                     description="... or until they fill this much (default: a tenth of the data volume)")
    alerts: Alerts = Field(default_factory=Alerts)


def _settings(ctx: Context) -> Settings:
    return ctx.config.service(NAME)


def prefix(ctx: Context, route: str) -> str:
    """Path prefix of a UI: none with a domain, ``/<route>`` on the bare address."""
    return "" if ctx.config.domain else f"/{route}"


def retention_gb(ctx: Context) -> int:
    """Sized to the data volume: a tenth of it (at least 1 GB), unless set."""
    return _settings(ctx).retention_gb or max(1, ctx.config.volume_size_gb // 10)


def _enabled(ctx: Context, service: str) -> bool:
    return service in ctx.config.enabled_services()


def _exports_postgres(ctx: Context) -> bool:
    """Postgres metrics come from the server's own Postgres (an external one has its provider's)."""
    from mlox_iac.components.services import postgres

    return _enabled(ctx, "postgres") and postgres.local(ctx)


# --------------------------------------------------------------------------- Prometheus


def scrape_targets(ctx: Context) -> dict[str, tuple[str, str]]:
    """job -> (target, metrics path) of everything Prometheus scrapes."""
    from mlox_iac.components.services import caddy

    jobs = {
        "prometheus": ("localhost:9090", f"{prefix(ctx, 'prometheus')}/metrics"),
        "alertmanager": ("alertmanager:9093", f"{prefix(ctx, 'alertmanager')}/metrics"),
        "node": ("node-exporter:9100", "/metrics"),
        "containers": ("container-metrics:9101", "/metrics"),
        "blackbox": ("blackbox-exporter:9115", "/metrics"),
        "caddy": (f"caddy:{caddy.METRICS_PORT}", "/metrics"),
    }
    if _exports_postgres(ctx):
        jobs["postgres"] = ("postgres-exporter:9187", "/metrics")
    if _enabled(ctx, "serving"):
        from mlox_iac.components.services import serving

        jobs["models"] = (f"serving:{serving.METRICS_PORT}", "/metrics")
    return jobs


def probe_urls(ctx: Context) -> list[str]:
    """Public URLs probed for certificate expiry (bare address: known only on the server)."""
    from mlox_iac.components.services import caddy

    if not ctx.config.domain:
        return []
    return [f"https://{r.name}.{ctx.config.domain}/" for r in caddy.all_routes(ctx)]


PROBES_FILE = "/tmp/mlox-probes.json"
SMTP_PASSWORD_FILE = "/tmp/mlox-smtp-password"


def render_prometheus(ctx: Context) -> str:
    scrape = [
        {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [target]}]}
        for job, (target, path) in scrape_targets(ctx).items()
    ]
    probe: dict = {
        "job_name": "certificates",
        "metrics_path": "/probe",
        "params": {"module": ["https_answers"]},
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": "blackbox-exporter:9115"},
        ],
    }
    if ctx.config.domain:
        probe["static_configs"] = [{"targets": probe_urls(ctx)}]
    else:
        probe["file_sd_configs"] = [{"files": [PROBES_FILE]}]
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL,
                   "external_labels": {"stack": ctx.config.stack_name}},
        "rule_files": ["/etc/prometheus/rules.yml"],
        "alerting": {"alertmanagers": [{"path_prefix": prefix(ctx, "alertmanager") or "/",
                                        "static_configs": [{"targets": ["alertmanager:9093"]}]}]},
        "scrape_configs": [*scrape, probe],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _containers(ctx: Context) -> list[str]:
    """Every container of the stack (monitoring's own included), for the ServiceDown rules."""
    from mlox_iac.components.services.registry import SERVICES

    names: list[str] = []
    for service in ctx.config.enabled_services():
        if service == NAME:  # its own compose part hashes these rules: name its containers directly
            names += ["monitoring-init", "monitoring", "alertmanager", "node-exporter", "container-metrics",
                      "blackbox-exporter"] + (["postgres-exporter"] if _exports_postgres(ctx) else [])
        else:
            names += list(SERVICES[service].compose(ctx).get("services", {}))
    return names


def alert_rules(ctx: Context) -> list[dict]:
    """The alerting rules, one group. Thresholds say why where they are not obvious."""
    # Caddy's internal CA issues 12-hour certificates and renews them with a third left;
    # Let's Encrypt's last 90 days and are renewed 30 days before they end.
    cert_left, cert_text = (14 * 86400, "14 days") if ctx.config.domain else (2 * 3600, "2 hours")
    blind = 'unless on() (up{job="containers"} == 0)'  # the exporter down is TargetDown, not every service
    rules: list[dict] = [
        {"alert": "ServiceDown", "expr": f'absent(mlox_container_running{{service="{c}"}} == 1) {blind}',
         "for": "1m", "labels": {"severity": "critical", "service": c},
         "annotations": {"summary": f"{c} is not running"}}
        for c in _containers(ctx)
    ]
    rules += [
        {"alert": "TargetDown", "expr": "up == 0", "for": "2m", "labels": {"severity": "critical"},
         "annotations": {"summary": "Prometheus cannot scrape {{ $labels.job }} ({{ $labels.instance }})"}},
        {"alert": "ServiceUnhealthy", "expr": "mlox_container_healthy == 0", "for": "3m",
         "labels": {"severity": "warning"}, "annotations": {"summary": "{{ $labels.service }} fails its health check"}},
        {"alert": "DiskAlmostFull",
         "expr": '1 - node_filesystem_avail_bytes{fstype!~"tmpfs|overlay|squashfs|nsfs|ramfs"}'
                 ' / node_filesystem_size_bytes{fstype!~"tmpfs|overlay|squashfs|nsfs|ramfs"} > 0.85',
         "for": "5m", "labels": {"severity": "warning"},
         "annotations": {"summary": "{{ $labels.mountpoint }} is {{ $value | humanizePercentage }} full"}},
        {"alert": "MemoryPressure", "expr": "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes < 0.10",
         "for": "5m", "labels": {"severity": "warning"},
         "annotations": {"summary": "less than 10 % of the server's memory is available"}},
        {"alert": "ContainerNearMemoryLimit",
         "expr": "mlox_container_memory_bytes / (mlox_container_memory_limit_bytes > 0) > 0.9",
         "for": "5m", "labels": {"severity": "warning"},
         "annotations": {"summary": "{{ $labels.service }} uses over 90 % of its memory limit"}},
        {"alert": "CertificateExpiring", "expr": f"probe_ssl_earliest_cert_expiry - time() < {cert_left}",
         "for": "10m", "labels": {"severity": "warning"},
         "annotations": {"summary": f"the certificate of {{{{ $labels.instance }}}} expires in less than {cert_text}"}},
        {"alert": "RouteUnreachable", "expr": 'probe_success{job="certificates"} == 0', "for": "5m",
         "labels": {"severity": "critical"}, "annotations": {"summary": "{{ $labels.instance }} does not answer over HTTPS"}},
        # Written by the backup job into the textfile directory (see README, "Monitoring").
        {"alert": "BackupFailed", "expr": "mlox_backup_last_status == 0", "labels": {"severity": "critical"},
         "annotations": {"summary": "the last backup failed"}},
        {"alert": "BackupStale",
         "expr": "time() - mlox_backup_last_success_timestamp_seconds > 2 * mlox_backup_interval_seconds",
         "labels": {"severity": "critical"},
         "annotations": {"summary": "no successful backup for more than twice the schedule's interval"}},
    ]
    if _enabled(ctx, "airflow"):
        # Written by pipelines' monitoring tasks (the pipeline template's drift check) into
        # the textfile directory; each says its own threshold.
        rules.append({"alert": "FeatureDrift",
                      "expr": "mlox_feature_drift_psi > on(pipeline, model) group_left() mlox_feature_drift_threshold",
                      "labels": {"severity": "warning"},
                      "annotations": {"summary": "{{ $labels.feature }} of model {{ $labels.model }} drifted: "
                                                 "PSI {{ $value | printf \"%.2f\" }} (pipeline {{ $labels.pipeline }})"}})
    if _enabled(ctx, "serving"):
        rules.append({"alert": "ModelNotServingAlias", "expr": "mlox_model_desired_version != mlox_model_served_version",
                      "for": "15m", "labels": {"severity": "warning"},
                      "annotations": {"summary": "model {{ $labels.model }} does not serve the version its alias names"}})
    return rules


def render_rules(ctx: Context) -> str:
    return yaml.safe_dump({"groups": [{"name": "mlox", "rules": alert_rules(ctx)}]}, sort_keys=False, width=1000)




# --------------------------------------------------------------------------- Alertmanager


def render_alertmanager(ctx: Context) -> str:
    alerts = _settings(ctx).alerts
    receiver: dict = {"name": "mlox"}
    config: dict = {}
    if alerts.webhook_url:
        receiver["webhook_configs"] = [{"url": alerts.webhook_url, "send_resolved": True}]
    if alerts.email:
        email = alerts.email
        config["global"] = {"smtp_smarthost": email.smarthost, "smtp_from": email.sender,
                            "smtp_require_tls": email.require_tls}
        if email.username:
            config["global"]["smtp_auth_username"] = email.username
        if email.password:  # written from the env file when Alertmanager starts
            config["global"]["smtp_auth_password_file"] = SMTP_PASSWORD_FILE
        receiver["email_configs"] = [{"to": email.to, "send_resolved": True}]
    config["route"] = {"receiver": "mlox", "group_by": ["alertname", "service"],
                       "group_wait": "10s", "group_interval": "1m", "repeat_interval": "4h"}
    config["receivers"] = [receiver]
    return yaml.safe_dump(config, sort_keys=False)


BLACKBOX = yaml.safe_dump({"modules": {"https_answers": {
    "prober": "http", "timeout": "10s",
    # The proxy answering is what counts (most routes answer 401 without credentials); the
    # certificate is checked for expiry, not trust (the internal CA is the server's own).
    "http": {"valid_status_codes": _ANSWERED, "method": "GET", "fail_if_not_ssl": True,
             "tls_config": {"insecure_skip_verify": True}},
}}}, sort_keys=False)


# --------------------------------------------------------------------------- compose


def compose(ctx: Context) -> dict:
    from mlox_iac.components.services import mlflow

    files = files_of(ctx)
    env_file = ctx.env_files(NAME)
    prom_prefix, am_prefix = prefix(ctx, "prometheus"), prefix(ctx, "alertmanager")
    # The bare address is known on the server only: the probe target is written at start.
    write_probes = "" if ctx.config.domain else (
        f"printf '[{{\"targets\":[\"https://%s/\"]}}]' \"$$MLOX_ADDRESS\" > {PROBES_FILE} && "
    )
    prometheus_cmd = (
        f"{write_probes}exec /bin/prometheus --config.file=/etc/prometheus/prometheus.yml "
        "--storage.tsdb.path=/prometheus "
        f"--storage.tsdb.retention.time={_settings(ctx).retention_days}d "
        f"--storage.tsdb.retention.size={retention_gb(ctx)}GB "
        "--web.console.libraries=/usr/share/prometheus/console_libraries "
        "--web.console.templates=/etc/prometheus/consoles "
        f"--web.external-url={prom_prefix or '/'}"
    )
    email = _settings(ctx).alerts.email
    write_password = (f"(umask 077; printf '%s' \"$$SMTP_PASSWORD\" > {SMTP_PASSWORD_FILE}) && "
                      if email and email.password else "")
    am_cmd = (
        f"{write_password}exec /bin/alertmanager --config.file=/etc/alertmanager/alertmanager.yml --storage.path=/alertmanager "
        f"--web.route-prefix={am_prefix or '/'} --web.external-url=https://$$MLOX_ALERTMANAGER_HOST{am_prefix}"
    )
    wget = ["CMD", "wget", "-q", "-O", "/dev/null"]
    # With Airflow, its tasks (user 50000, group 0) may leave *.prom files in the textfile
    # directory: group-writable for root's group, sticky so no task replaces another's file.
    textfile = _enabled(ctx, "airflow")
    init = f"chown -R {NOBODY} /prometheus /alertmanager" + (" && chgrp 0 /textfile && chmod 1775 /textfile" if textfile else "")
    services: dict = {
        "monitoring-init": {
            # The data directories live on the data volume, created by root; the images run as nobody.
            "image": IMAGE, "user": "0:0",
            **provisioner(init),
            "volumes": ["prometheus-data:/prometheus", "alertmanager-data:/alertmanager",
                        *([f"{TEXTFILE_DIR}:/textfile"] if textfile else [])],
            "deploy": limits(32),
        },
        "monitoring": {
            "image": IMAGE,
            "restart": "unless-stopped",
            "env_file": env_file,
            "entrypoint": ["/bin/sh", "-c", prometheus_cmd],
            "volumes": [
                "prometheus-data:/prometheus",
                "./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
                "./monitoring/rules.yml:/etc/prometheus/rules.yml:ro",
                "./monitoring/consoles:/etc/prometheus/consoles:ro",
            ],
            "labels": {"org.mlox.config-hash": digest(*(files[k] for k in sorted(files) if not k.endswith("alertmanager.yml")))},
            "healthcheck": hc([*wget, f"http://127.0.0.1:9090{prom_prefix}/-/ready"], start_period="30s"),
            "depends_on": {"monitoring-init": {"condition": "service_healthy"}},
            "deploy": limits(PROMETHEUS_MB),
        },
        "alertmanager": {
            "image": ALERTMANAGER_IMAGE,
            "restart": "unless-stopped",
            "env_file": env_file,
            "entrypoint": ["/bin/sh", "-c", am_cmd],
            "volumes": ["alertmanager-data:/alertmanager", "./monitoring/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"],
            "labels": {"org.mlox.config-hash": digest(files["monitoring/alertmanager.yml"])},
            "healthcheck": hc([*wget, f"http://127.0.0.1:9093{am_prefix}/-/ready"]),
            "depends_on": {"monitoring-init": {"condition": "service_healthy"}},
            "deploy": limits(64),
        },
        "node-exporter": {
            "image": NODE_EXPORTER_IMAGE,
            "restart": "unless-stopped",
            "pid": "host",
            "command": ["--path.rootfs=/host", "--collector.textfile.directory=/textfile",
                        "--collector.filesystem.mount-points-exclude=^/(dev|proc|run|sys|var/lib/docker/.+)($|/)"],
            "volumes": ["/:/host:ro", f"{TEXTFILE_DIR}:/textfile:ro"],
            "healthcheck": hc([*wget, "http://127.0.0.1:9100/metrics"]),
            "deploy": limits(64),
        },
        "container-metrics": {
            "image": mlflow.IMAGE,  # its Python, already on the server: no image of its own
            "restart": "unless-stopped",
            "command": ["python3", "/mlox/container_metrics.py"],
            "environment": {"PORT": "9101"},
            "volumes": ["/var/lib/docker/containers:/host/docker/containers:ro", "/sys/fs/cgroup:/host/cgroup:ro",
                        "./monitoring/container_metrics.py:/mlox/container_metrics.py:ro"],
            "labels": {"org.mlox.config-hash": digest(files["monitoring/container_metrics.py"])},
            "healthcheck": hc(http_check(9101, "/metrics")),
            "deploy": limits(48),
        },
        "blackbox-exporter": {
            "image": BLACKBOX_IMAGE,
            "restart": "unless-stopped",
            "volumes": ["./monitoring/blackbox.yml:/etc/blackbox_exporter/config.yml:ro"],
            "labels": {"org.mlox.config-hash": digest(files["monitoring/blackbox.yml"])},
            "healthcheck": hc([*wget, "http://127.0.0.1:9115/-/healthy"]),
            "deploy": limits(64),
        },
    }
    if _exports_postgres(ctx):
        services["postgres-exporter"] = {
            "image": POSTGRES_EXPORTER_IMAGE,
            "restart": "unless-stopped",
            "env_file": env_file,
            "environment": {"DATA_SOURCE_URI": "postgres:5432/postgres?sslmode=disable"},
            "healthcheck": hc([*wget, "http://127.0.0.1:9187/metrics"]),
            "depends_on": {"postgres-provision": {"condition": "service_healthy"}},  # its password set
            "deploy": limits(64),
        }
    return {
        "services": services,
        "volumes": {"prometheus-data": ctx.volume("prometheus-data"), "alertmanager-data": ctx.volume("alertmanager-data")},
    }


def routes(ctx: Context) -> list[Route]:
    # Both serve every path under their prefix themselves (route prefix = external URL path).
    return [Route("prometheus", "monitoring:9090", auth="basic", strip_prefix=False),
            Route("alertmanager", "alertmanager:9093", auth="basic", strip_prefix=False)]


# Browsers' and Prometheus' own tools'; for clients, only the health paths status probes.
FACES = (Face("prometheus", route="prometheus", auth="basic", health="/-/healthy"),
         Face("alertmanager", route="alertmanager", auth="basic", health="/-/healthy"))


def files_of(ctx: Context) -> dict[str, str]:
    return {
        "monitoring/prometheus.yml": render_prometheus(ctx),
        "monitoring/rules.yml": render_rules(ctx),
        # The dashboard: a console page Prometheus renders from live data (no JavaScript needed).
        "monitoring/consoles/mlox.html": programs.source("mlox.html"),
        "monitoring/alertmanager.yml": render_alertmanager(ctx),
        "monitoring/blackbox.yml": BLACKBOX,
        "monitoring/container_metrics.py": programs.source("container_metrics.py"),
    }


def files(ctx: Context) -> dict[str, str]:
    return files_of(ctx)


def data(ctx: Context) -> Data:
    return Data(not_kept={
        "prometheus-data": "metrics history: rebuilt by scraping; losing it loses past graphs, no user data",
        "alertmanager-data": "silences and notification state: rebuilt as alerts fire",
    })


READ_ON = "2026-12-06"  # when the managed equivalents' prices below were read


def managed(ctx: Context) -> tuple[Managed, ...]:
    """Hosted Prometheus, dashboards and alerting."""
    return (
        Managed(NAME, "Grafana Cloud Pro (hosted Prometheus, Grafana, alerting)", "USD", 19.0,
                "https://grafana.com/pricing/", READ_ON,
                "the Pro plan's platform fee as remembered, not confirmed on the pricing page; metrics beyond the "
                "included active series, logs and users are billed by usage"),
        Managed(NAME, "Amazon Managed Service for Prometheus", "USD", None, "https://aws.amazon.com/prometheus/pricing/",
                READ_ON, "billed by usage: samples ingested, stored and queried; no flat price"),
    )


class Monitoring(ServiceComponent):
    """Monitoring: the server's address (for links and probes) and the Postgres login of the exporter."""

    def __init__(self, name: str, ctx: Context, servers, deps: dict, opts: pulumi.ResourceOptions | None = None):
        import pulumi

        super().__init__("mlox:service:Monitoring", name, {}, opts)
        self._setup(name, servers)
        from mlox_iac.components.services import caddy

        am_route = next(r for r in routes(ctx) if r.name == "alertmanager")
        values: dict = {
            "MLOX_ADDRESS": lambda target: target.public_address,
            # Alertmanager's links in notifications: the host part of its public URL (per server).
            "MLOX_ALERTMANAGER_HOST": lambda target: target.public_address.apply(
                lambda a: ctx.public_url(am_route, a).removeprefix("https://").split("/")[0]),
        }
        email = ctx.config.service(NAME).alerts.email
        if email and email.password:
            values["SMTP_PASSWORD"] = pulumi.Output.secret(email.password.get_secret_value())
        after = [deps[caddy.NAME]] if caddy.NAME in deps else []
        exporter = _exports_postgres(ctx)
        if exporter:
            from mlox_iac.components.services import postgres

            values["DATA_SOURCE_USER"] = postgres.SUPERUSER
            values["DATA_SOURCE_PASS"] = deps["postgres"].superuser_password
            after.append(deps["postgres"])
        containers = ["monitoring", "alertmanager"] + (["postgres-exporter"] if exporter else [])
        self.write_env(NAME, values, containers, after=after)
        self.register_outputs({})


SERVICE = Service(
    name=NAME, image=IMAGE, memory_mb=MEMORY_MB, requires=("caddy",), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=Monitoring, managed=managed, faces=FACES,
    # Without the server's own Postgres, no postgres-exporter (64 MiB).
    memory=lambda ctx: MEMORY_MB if _exports_postgres(ctx) else MEMORY_MB - 64,
)
