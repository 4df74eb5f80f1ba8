"""Stack file validation: a table of bad fragments, each with the exact error line."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KEY, ROOT, settings, write_stack
from testca import root_ca, server_cert
from mlox_iac.config.loader import load_file
from mlox_iac.errors import ConfigError

SSH = {"public_keys": [KEY]}
DOMAIN = {"domain": "ml.example.com", "acme_email": "ops@example.com"}
ACME_CA = "https://ca.example.com/acme/directory"
ROOT_CA = root_ca()
EXPIRED_CA = root_ca(not_after=datetime.datetime(2020, 1, 2, tzinfo=datetime.timezone.utc))
SSH_CIDR = {"admin_cidrs": ["10.0.0.0/8"]}
# The test key's wire format with its 32-byte key cut to 31: right type, broken structure.
TRUNCATED_ED25519 = base64.b64encode(base64.b64decode(KEY.split()[1])[:-1]).decode()

S3 = {"endpoint": "https://fsn1.your-objectstorage.com", "access_key_id": "AKIA", "secret_access_key": "s3cret"}
PG = {"host": "db.example.com", "admin_password": "pw", "ca": ROOT_CA.cert_pem}

CASES = {
    "unknown_top_level_key": (settings(domian="x.example.com"),
        "mlox:domian: unknown key (did you mean 'domain'?)"),
    "unknown_nested_key": (settings(hetzner={"location": "fsn1", "server_typ": "cx23"}),
        "mlox:hetzner.server_typ: unknown key (did you mean 'server_type'?)"),
    "unknown_service": (settings(services={"mlfow": {"enabled": True}}),
        "mlox:services.mlfow: unknown key (did you mean 'mlflow'?)"),
    "bad_provider": ({**settings(), "provider": "linode"},
        "mlox:provider: 'linode' is not allowed (allowed: hetzner, digitalocean, aws or onprem)"),
    "missing_provider_block": ({**settings(), "provider": "aws"},
        "mlox:aws: required when provider is aws (set mlox:aws)"),
    "bad_server_type": (settings(hetzner={"server_type": "cx99"}),
        "mlox:hetzner.server_type: unknown server type 'cx99' (allowed: cx23, cx33, cx43, cx53, cpx12, cpx22, "
        "cpx32, cpx42, cpx52, cpx62, cax11, cax21, cax31, cax41)"),
    "retired_server_type": (settings(hetzner={"server_type": "cx22"}),
        "mlox:hetzner.server_type: 'cx22' is retired and can no longer be ordered (allowed: cx23, its current "
        "equivalent, or another of cx23, cx33, cx43, cx53, cpx12, cpx22, cpx32, cpx42, cpx52, cpx62, cax11, cax21, "
        "cax31, cax41)"),
    "retired_cpx_names_successor": (settings(hetzner={"server_type": "cpx51"}),
        "mlox:hetzner.server_type: 'cpx51' is retired and can no longer be ordered (allowed: cpx62, its current "
        "equivalent, or another of cx23, cx33, cx43, cx53, cpx12, cpx22, cpx32, cpx42, cpx52, cpx62, cax11, cax21, "
        "cax31, cax41)"),
    "size_not_sold_at_location": (settings(hetzner={"location": "ash", "server_type": "cx23"}),
        "mlox:hetzner.server_type: 'cx23' is not sold in ash (allowed there: cpx11, cpx21, cpx31, cpx41, cpx51)"),
    "bad_location": (settings(hetzner={"location": "mars1"}),
        "mlox:hetzner.location: 'mars1' is not allowed (allowed: fsn1, nbg1, hel1, ash, hil or sin)"),
    "bad_droplet_size": (settings("digitalocean", digitalocean={"size": "huge"}),
        "mlox:digitalocean.size: unknown droplet size 'huge' (allowed: s-1vcpu-1gb, s-1vcpu-2gb, s-2vcpu-2gb, "
        "s-2vcpu-4gb, s-4vcpu-8gb, s-8vcpu-16gb, g-2vcpu-8gb, m-2vcpu-16gb)"),
    "bad_aws_image": (settings("aws", aws={"image": "windows"}),
        "mlox:aws.image: 'windows' is not allowed (allowed: debian-12 or ubuntu-24.04)"),
    "bad_cidr": (settings(ssh={**SSH, "admin_cidrs": ["10.0.0.1/33"]}),
        "mlox:ssh.admin_cidrs: '10.0.0.1/33' is not a network in CIDR form (allowed: e.g. 203.0.113.7/32, 2001:db8::/48)"),
    "host_bits_cidr": (settings(ssh={**SSH, "admin_cidrs": ["10.0.0.1/24"]}),
        "mlox:ssh.admin_cidrs: '10.0.0.1/24' is not a network in CIDR form (allowed: e.g. 203.0.113.7/32, 2001:db8::/48)"),
    "no_admin_cidrs": (settings(ssh={**SSH, "admin_cidrs": []}),
        "mlox:ssh.admin_cidrs: must have at least 1 item(s)"),
    "bad_public_key": (settings(ssh={"public_keys": ["AAAA nope"], "admin_cidrs": ["10.0.0.0/8"]}),
        "mlox:ssh.public_keys[0]: 'AAAA nope' is not an OpenSSH public key (allowed: ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256 ...)"),
    "public_key_body_not_base64": (settings(ssh={**SSH_CIDR, "public_keys": [KEY, "ssh-ed25519 AAAA%not+base64 x@y"]}),
        "mlox:ssh.public_keys[1]: the ssh-ed25519 key's body is not base64 (allowed: the line of a .pub file, e.g. from ssh-keygen)"),
    "public_key_body_not_a_key": (settings(ssh={**SSH_CIDR, "public_keys": ["ssh-ed25519 bm90IGEga2V5IGF0IGFsbA== x@y"]}),
        "mlox:ssh.public_keys[0]: the ssh-ed25519 key's body is not an SSH key (allowed: the line of a .pub file, e.g. from ssh-keygen)"),
    "public_key_type_mismatch": (settings(ssh={**SSH_CIDR, "public_keys": ["ssh-rsa " + KEY.split()[1]]}),
        "mlox:ssh.public_keys[0]: the line says ssh-rsa but its body holds a 'ssh-ed25519' key (allowed: the line of a .pub file, e.g. from ssh-keygen)"),
    "public_key_truncated": (settings(ssh={**SSH_CIDR, "public_keys": [KEY.split()[0] + " " + TRUNCATED_ED25519]}),
        "mlox:ssh.public_keys[0]: the ssh-ed25519 key's body is not a valid ssh-ed25519 key (allowed: the line of a .pub file, e.g. from ssh-keygen)"),
    "missing_ssh": ({k: v for k, v in settings().items() if k != "ssh"},
        "mlox:ssh: required"),
    "volume_too_small": (settings(volume_size_gb=5),
        "mlox:volume_size_gb: 5 is too small (allowed: 10 or more)"),
    "volume_not_number": (settings(volume_size_gb="big"),
        "mlox:volume_size_gb: 'big' is not a whole number"),
    "bad_domain": (settings(domain="Not A Domain", acme_email="a@b.co"),
        "mlox:domain: 'Not A Domain' is not a domain name (allowed: lowercase DNS name such as ml.example.com)"),
    "domain_without_email": (settings(domain="ml.example.com"),
        "mlox:acme_email: required when a domain is set (Let's Encrypt needs a contact address)"),
    "acme_ca_not_https": (settings(**DOMAIN, acme_ca="http://ca.example.com/acme/directory"),
        "mlox:acme_ca: 'http://ca.example.com/acme/directory' is not an https URL (allowed: an ACME directory URL "
        "such as https://acme-staging-v02.api.letsencrypt.org/directory)"),
    "acme_ca_not_a_url": (settings(**DOMAIN, acme_ca="ca.example.com"),
        "mlox:acme_ca: 'ca.example.com' is not an https URL (allowed: an ACME directory URL "
        "such as https://acme-staging-v02.api.letsencrypt.org/directory)"),
    "acme_ca_without_domain": (settings(acme_ca=ACME_CA),
        "mlox:acme_ca: only used with a domain (set mlox:domain, or remove mlox:acme_ca)"),
    "acme_ca_root_without_acme_ca": (settings(**DOMAIN, acme_ca_root=ROOT_CA.cert_pem),
        "mlox:acme_ca_root: only used with mlox:acme_ca (the root of a custom ACME CA)"),
    "acme_ca_root_not_pem": (settings(**DOMAIN, acme_ca=ACME_CA, acme_ca_root="/etc/ssl/certs/my-ca.pem"),
        "mlox:acme_ca_root: not PEM certificates only (allowed: one or more -----BEGIN CERTIFICATE----- "
        "blocks and nothing else)"),
    "acme_ca_root_garbage_around_pem": (settings(**DOMAIN, acme_ca=ACME_CA, acme_ca_root="ca:\n" + ROOT_CA.cert_pem),
        "mlox:acme_ca_root: not PEM certificates only (allowed: one or more -----BEGIN CERTIFICATE----- "
        "blocks and nothing else)"),
    "acme_ca_root_bad_base64": (settings(**DOMAIN, acme_ca=ACME_CA,
                                         acme_ca_root="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        "mlox:acme_ca_root: certificate 1 is not a valid X.509 certificate"),
    "acme_ca_root_server_certificate": (settings(**DOMAIN, acme_ca=ACME_CA,
                                                 acme_ca_root=ROOT_CA.cert_pem + server_cert(ROOT_CA, "ca.example.com").cert_pem),
        "mlox:acme_ca_root: certificate 2 is not a CA certificate (allowed: the CA's root, not a server certificate)"),
    "acme_ca_root_private_key": (settings(**DOMAIN, acme_ca=ACME_CA, acme_ca_root=ROOT_CA.cert_pem + ROOT_CA.key_pem),
        "mlox:acme_ca_root: contains a private key (allowed: CA certificates only; never put a key here)"),
    "acme_ca_root_expired": (settings(**DOMAIN, acme_ca=ACME_CA, acme_ca_root=EXPIRED_CA.cert_pem),
        "mlox:acme_ca_root: certificate 1 expired on Jan  2 00:00:00 2020 GMT"),
    "bad_port": (settings("onprem", onprem={"host": "192.0.2.5", "port": 70000, "private_key": "K"}),
        "mlox:onprem.port: 70000 is too large (allowed: 65535 or less)"),
    "bad_host": (settings("onprem", onprem={"host": "no spaces allowed", "private_key": "K"}),
        "mlox:onprem.host: 'no spaces allowed' is not an IP address or host name"),
    "missing_host": (settings("onprem", onprem={"private_key": "K"}),
        "mlox:onprem.host: required"),
    "too_little_memory": (settings(hetzner={"server_type": "cpx12"}),
        "mlox:hetzner.server_type: server has 2048 MiB but the enabled services need 2720 MiB (postgres 512, "
        "seaweedfs 512, mlflow 1024, home 32, caddy 128, system 512) (allowed: a size with at least 2720 MiB, or fewer services)"),
    "mlflow_without_postgres": (settings(services={"postgres": {"enabled": False}}),
        "mlox:services.postgres.enabled: must be true because mlflow needs postgres"),
    "bad_bucket": (settings(services={"seaweedfs": {"buckets": ["Bad_Bucket"]}}),
        "mlox:services.seaweedfs.buckets: 'Bad_Bucket' is not a valid bucket name (allowed: 3-63 of a-z 0-9 . -)"),
    "enabled_not_bool": (settings(services={"mlflow": {"enabled": "sometimes"}}),
        "mlox:services.mlflow.enabled: 'sometimes' is not true or false"),
    "bad_preset": (settings(services={"preset": "everything"}),
        "mlox:services.preset: 'everything' is not allowed (allowed: core or full)"),
    "full_preset_on_a_small_server": (settings(hetzner={"server_type": "cx23"}, services={"preset": "full"}),
        "mlox:hetzner.server_type: server has 4096 MiB but the enabled services need 8144 MiB (postgres 512, "
        "seaweedfs 512, mlflow 1024, redis 128, feast 512, label-studio 768, airflow 2304, jupyter 1024, serving 128, "
        "monitoring 560, home 32, caddy 128, system 512) (allowed: a size with at least 8144 MiB, or fewer services)"),
    "bad_dags_repo": (settings("onprem", services={"airflow": {"enabled": True, "dags_repo": "ftp://x/y"}}),
        "mlox:services.airflow.dags_repo: 'ftp://x/y' is not allowed (allowed: matching "
        "^(https://|http://|git://|ssh://|file://|git@)\\S+$)"),
    "feast_without_redis": (settings("onprem", services={"feast": {"enabled": True}}),
        "mlox:services.redis.enabled: must be true because feast needs redis"),
    "full_preset_without_postgres": (settings("onprem", services={"preset": "full", "postgres": {"enabled": False}}),
        "mlox:services.postgres.enabled: must be true because mlflow needs postgres"),
    "preset_not_a_string": (settings(services={"preset": ["core"]}),
        "mlox:services.preset: ['core'] is not allowed (allowed: core or full)"),
    "bad_docker_source": (settings(docker={"source": "snap"}),
        "mlox:docker.source: 'snap' is not allowed (allowed: docker or debian)"),
    "registry_mirror_plain_http": (settings(docker={"registry_mirrors": ["http://mirror.example.com"]}),
        "mlox:docker.registry_mirrors[0]: 'http://mirror.example.com' is not an https URL of a registry (allowed: "
        "e.g. https://mirror.example.com or https://mirror.example.com:5000; plain http is refused, TLS stays on)"),
    "registry_mirror_host_only": (settings(docker={"registry_mirrors": ["https://ok.example.com", "mirror.example.com"]}),
        "mlox:docker.registry_mirrors[1]: 'mirror.example.com' is not an https URL of a registry (allowed: "
        "e.g. https://mirror.example.com or https://mirror.example.com:5000; plain http is refused, TLS stays on)"),
    "registry_mirror_with_query": (settings(docker={"registry_mirrors": ["https://mirror.example.com/?token=x"]}),
        "mlox:docker.registry_mirrors[0]: 'https://mirror.example.com/?token=x' is not an https URL of a registry "
        "(allowed: e.g. https://mirror.example.com or https://mirror.example.com:5000; plain http is refused, "
        "TLS stays on)"),
    "registry_mirror_with_credentials": (settings(docker={"registry_mirrors": ["https://u:p@mirror.example.com"]}),
        "mlox:docker.registry_mirrors[0]: 'https://u:p@mirror.example.com' is not an https URL of a registry "
        "(allowed: e.g. https://mirror.example.com or https://mirror.example.com:5000; plain http is refused, "
        "TLS stays on)"),
    "registry_mirror_bad_port": (settings(docker={"registry_mirrors": ["https://mirror.example.com:http"]}),
        "mlox:docker.registry_mirrors[0]: 'https://mirror.example.com:http' is not an https URL of a registry "
        "(allowed: e.g. https://mirror.example.com or https://mirror.example.com:5000; plain http is refused, "
        "TLS stays on)"),
    "registry_mirror_twice": (settings(docker={"registry_mirrors": ["https://m.example.com", "https://m.example.com/"]}),
        "mlox:docker.registry_mirrors: 'https://m.example.com/' is listed twice (allowed: each mirror once)"),
    "registry_mirrors_not_a_list": (settings(docker={"registry_mirrors": "https://m.example.com"}),
        "mlox:docker.registry_mirrors: must be a list"),
    "registry_ca_without_mirrors": (settings(docker={"registry_ca": ROOT_CA.cert_pem}),
        "mlox:docker.registry_ca: only used with mlox:docker.registry_mirrors (the CA of the mirrors)"),
    "registry_ca_not_pem": (settings(docker={"registry_mirrors": ["https://m.example.com"], "registry_ca": "ca.pem"}),
        "mlox:docker.registry_ca: not PEM certificates only (allowed: one or more -----BEGIN CERTIFICATE----- "
        "blocks and nothing else)"),
    "registry_ca_expired": (settings(docker={"registry_mirrors": ["https://m.example.com"],
                                             "registry_ca": EXPIRED_CA.cert_pem}),
        "mlox:docker.registry_ca: certificate 1 expired on Jan  2 00:00:00 2020 GMT"),
    # Model serving and monitoring.
    "model_bad_name": (settings(services={"serving": {"enabled": True, "models": [{"name": "my model!"}]}}),
        "mlox:services.serving.models[0].name: 'my model!' is not allowed (allowed: matching ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$)"),
    "model_without_name": (settings(services={"serving": {"enabled": True, "models": [{"alias": "prod"}]}}),
        "mlox:services.serving.models[0].name: required"),
    "models_sharing_a_route": (settings(services={"serving": {"enabled": True, "models": [{"name": "Iris"}, {"name": "iris"}]}}),
        "mlox:services.serving.models: 'iris' and 'Iris' would share the route 'model-iris' (allowed: distinct names)"),
    "model_log_sample_above_one": (settings(services={"serving": {"enabled": True, "models": [{"name": "iris", "log_sample": 1.5}]}}),
        "mlox:services.serving.models[0].log_sample: 1.5 is too large (allowed: 1.0 or less)"),
    "model_unknown_key": (settings(services={"serving": {"enabled": True, "models": [{"name": "iris", "memory": 512}]}}),
        "mlox:services.serving.models[0].memory: unknown key (did you mean 'memory_mb'?)"),
    "serving_without_mlflow": (settings(services={"mlflow": {"enabled": False}, "serving": {"enabled": True}}),
        "mlox:services.mlflow.enabled: must be true because serving needs mlflow"),
    "models_need_memory": (settings(services={"serving": {"enabled": True, "models": [
            {"name": "a", "memory_mb": 1024}, {"name": "b", "memory_mb": 1024}]}}),
        "mlox:hetzner.server_type: server has 4096 MiB but the enabled services need 5920 MiB (postgres 512, "
        "seaweedfs 512, mlflow 1024, serving 3200, home 32, caddy 128, system 512) (allowed: a size with at least 5920 MiB, "
        "or fewer services)"),
    "alert_webhook_not_a_url": (settings(services={"monitoring": {"enabled": True, "alerts": {"webhook_url": "hooks.example.com"}}}),
        "mlox:services.monitoring.alerts.webhook_url: 'hooks.example.com' is not an http(s) URL "
        "(allowed: e.g. https://hooks.example.com/mlox)"),
    "alert_email_without_port": (settings(services={"monitoring": {"enabled": True, "alerts": {"email": {
            "to": "ops@example.com", "sender": "mlox@example.com", "smarthost": "smtp.example.com"}}}}),
        "mlox:services.monitoring.alerts.email.smarthost: 'smtp.example.com' is not allowed (allowed: matching "
        "^[A-Za-z0-9.-]+:[0-9]{1,5}$)"),
    "alert_email_bad_address": (settings(services={"monitoring": {"enabled": True, "alerts": {"email": {
            "to": "ops", "sender": "mlox@example.com", "smarthost": "smtp.example.com:587"}}}}),
        "mlox:services.monitoring.alerts.email.to: 'ops' is not an e-mail address"),
    "retention_unknown_key": (settings(services={"monitoring": {"enabled": True, "retention": 30}}),
        "mlox:services.monitoring.retention: unknown key (did you mean 'retention_gb'?)"),
    "bad_backup_repository": (settings(backup={"repository": "ftp://backups.example.com/x"}),
        "mlox:backup.repository: 'ftp://backups.example.com/x' is not a repository "
        "(allowed: s3:https://ENDPOINT/BUCKET[/PREFIX] or local:/PATH)"),
    "bad_backup_schedule": (settings(backup={"repository": "local:/srv/backups", "schedule": "7m"}),
        "mlox:backup.schedule: '7m' is not a schedule "
        "(allowed: hourly, daily, weekly, <N>m with N dividing 60, <N>h with N dividing 24)"),
    "backup_without_keys": (settings(backup={"repository": "s3:https://fsn1.your-objectstorage.com/team-backups"}),
        "mlox:backup.access_key_id: required with an s3: repository, with secret_access_key "
        "(set them with: pulumi config set --secret --path 'mlox:backup.access_key_id' KEY)"),
    "backup_keeps_nothing": (settings(backup={"repository": "local:/srv/b", "keep": {"daily": 0, "weekly": 0, "monthly": 0}}),
        "mlox:backup.keep: keeps no snapshot at all "
        "(allowed: at least one of last, hourly, daily, weekly, monthly above 0)"),
    "backup_unknown_key": (settings(backup={"repository": "local:/srv/b", "shedule": "daily"}),
        "mlox:backup.shedule: unknown key (did you mean 'schedule'?)"),
    # External services (issue 28): one line each, naming the key and what is allowed.
    "external_s3_http_endpoint": (settings(services={"seaweedfs": {"external": {**S3, "endpoint": "http://s3.example.com"}}}),
        "mlox:services.seaweedfs.external.endpoint: 'http://s3.example.com' is not an https endpoint "
        "(allowed: https://HOST[:PORT], no path; TLS is always verified)"),
    "external_s3_endpoint_with_path": (settings(services={"seaweedfs": {"external": {**S3, "endpoint": "https://s3.example.com/b"}}}),
        "mlox:services.seaweedfs.external.endpoint: 'https://s3.example.com/b' is not an https endpoint "
        "(allowed: https://HOST[:PORT], no path; TLS is always verified)"),
    "external_s3_without_key": (settings(services={"seaweedfs": {"external": {k: v for k, v in S3.items() if k != "access_key_id"}}}),
        "mlox:services.seaweedfs.external.access_key_id: required"),
    "external_s3_bad_prefix": (settings(services={"seaweedfs": {"external": {**S3, "bucket_prefix": "Team_"}}}),
        "mlox:services.seaweedfs.external.bucket_prefix: 'Team_' is not a bucket prefix (allowed: up to 40 of "
        "a-z 0-9 . -, starting with a letter or digit)"),
    "external_s3_prefix_too_long": (settings(services={"seaweedfs": {"buckets": ["a" * 40], "external": {**S3, "bucket_prefix": "p" * 30}}}),
        f"mlox:services.seaweedfs: bucket {'a' * 40!r} with the prefix {'p' * 30!r} is longer than 63 characters "
        "(allowed: a shorter prefix or bucket name)"),
    "external_s3_bad_region": (settings(services={"seaweedfs": {"external": {**S3, "region": "EU Central"}}}),
        "mlox:services.seaweedfs.external.region: 'EU Central' is not allowed (allowed: matching ^[a-z0-9-]{1,32}$)"),
    "external_s3_ca_not_a_ca": (settings(services={"seaweedfs": {"external": {**S3, "ca": "hello"}}}),
        "mlox:services.seaweedfs.external.ca: not PEM certificates only (allowed: one or more "
        "-----BEGIN CERTIFICATE----- blocks and nothing else)"),
    "external_postgres_tls_off": (settings(services={"postgres": {"external": {**PG, "sslmode": "disable"}}}),
        "mlox:services.postgres.external.sslmode: 'disable' is not allowed (allowed: verify-full or verify-ca)"),
    "external_postgres_tls_require": (settings(services={"postgres": {"external": {**PG, "sslmode": "require"}}}),
        "mlox:services.postgres.external.sslmode: 'require' is not allowed (allowed: verify-full or verify-ca)"),
    "external_postgres_without_ca": (settings(services={"postgres": {"external": {k: v for k, v in PG.items() if k != "ca"}}}),
        "mlox:services.postgres.external.ca: required"),
    "external_postgres_bad_host": (settings(services={"postgres": {"external": {**PG, "host": "db example"}}}),
        "mlox:services.postgres.external.host: 'db example' is not a host name or address (allowed: e.g. "
        "db.example.com, 10.0.0.5)"),
    "external_postgres_bad_port": (settings(services={"postgres": {"external": {**PG, "port": 70000}}}),
        "mlox:services.postgres.external.port: 70000 is too large (allowed: 65535 or less)"),
    "external_postgres_unknown_key": (settings(services={"postgres": {"external": {**PG, "passwrd": "x"}}}),
        "mlox:services.postgres.external.passwrd: unknown key (did you mean 'admin_password'?)"),
    "part_move_without_external": (settings(part_move={"part": "objects", "to": "external"}),
        "mlox:services.seaweedfs.external: required while mlox:part_move moves objects (the external side)"),
    "part_move_bad_part": (settings(part_move={"part": "redis", "to": "external"}),
        "mlox:part_move.part: 'redis' is not allowed (allowed: objects or postgres)"),

}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_stack_file_gives_exact_error_line(tmp_path, case):
    raw, expected = CASES[case]
    path = write_stack(tmp_path, raw)
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert error.value.problems == [f"{path}: {expected}"]


def test_private_key_must_be_secret(tmp_path):
    path = write_stack(tmp_path, settings("onprem"), secure=())
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert error.value.problems == [
        f"{path}: mlox:onprem.private_key: must be a secret "
        "(set it with: pulumi config set --secret --path 'mlox:onprem.private_key' < FILE)"
    ]


def test_smtp_password_must_be_secret(tmp_path):
    email = {"to": "ops@example.com", "sender": "mlox@example.com", "smarthost": "smtp.example.com:587",
             "username": "mlox", "password": "hunter2"}
    path = write_stack(tmp_path, settings(services={"monitoring": {"enabled": True, "alerts": {"email": email}}}))
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert error.value.problems == [
        f"{path}: mlox:services.monitoring.alerts.email.password: must be a secret "
        "(set it with: pulumi config set --secret --path 'mlox:services.monitoring.alerts.email.password' < FILE)"
    ]
    email["password"] = {"secure": "v1:dGVzdA=="}  # as `pulumi config set --secret --path` writes it
    config = load_file(write_stack(tmp_path, settings(services={"monitoring": {"enabled": True, "alerts": {"email": email}}})))
    assert "hunter2" not in repr(config) and config.service("monitoring").alerts.email.password is not None


def test_backup_keys_must_be_secrets(tmp_path):
    raw = settings(backup={"repository": "s3:https://s3.example.com/team-backups/prod", "access_key_id": "AKIA",
                           "secret_access_key": "plain"})
    path = write_stack(tmp_path, raw)
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert error.value.problems == [
        f"{path}: mlox:backup.access_key_id: must be a secret "
        "(set it with: pulumi config set --secret --path 'mlox:backup.access_key_id' < FILE)",
        f"{path}: mlox:backup.secret_access_key: must be a secret "
        "(set it with: pulumi config set --secret --path 'mlox:backup.secret_access_key' < FILE)",
    ]


def test_backup_defaults_and_local_repository_warning(tmp_path):
    raw = settings(backup={"repository": "local:/srv/mlox-backups"})
    config = load_file(write_stack(tmp_path, raw))
    assert (config.backup.schedule, config.backup.interval_s, config.backup.on_calendar) == ("daily", 86400, "daily")
    assert config.backup.keep.model_dump() == {"last": 0, "hourly": 0, "daily": 7, "weekly": 4, "monthly": 6}
    assert config.warnings() == [("backup.repository", "a local: repository is on the server's own disk, not off-site: "
                                  "losing the server loses the backups (use an s3: repository)")]
    path = write_stack(tmp_path, raw)
    done = subprocess.run([sys.executable, "-m", "mlox_iac.cli.main", "validate", "--file", str(path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0
    assert f"warning: {path}: mlox:backup.repository: a local: repository is on the server's own disk" in done.stderr


@pytest.mark.parametrize("schedule,keep,warned", [
    ("hourly", {}, "the schedule 'hourly' makes 24 snapshots a day but keep holds only the newest of each day "
                   "(set keep.hourly or keep.last to keep more)"),
    ("15m", {}, "the schedule '15m' makes 96 snapshots a day but keep holds only the newest of each day "
                "(set keep.hourly or keep.last to keep more)"),
    ("hourly", {"hourly": 48}, None), ("15m", {"last": 8}, None), ("daily", {}, None), ("weekly", {}, None),
])
def test_a_schedule_more_frequent_than_keep_holds_is_warned(tmp_path, schedule, keep, warned):
    raw = settings(backup={"repository": "s3:https://fsn1.your-objectstorage.com/team-backups",
                           "access_key_id": {"secure": "v1:YQ=="}, "secret_access_key": {"secure": "v1:Yg=="},
                           "schedule": schedule, "keep": keep})
    config = load_file(write_stack(tmp_path, raw))
    assert config.warnings() == ([("backup.keep", warned)] if warned else [])


@pytest.mark.parametrize("schedule,expected", [
    ("hourly", ("hourly", 3600)), ("weekly", ("weekly", 604800)), ("15m", ("*:0/15", 900)), ("6h", ("0/6:00", 21600)),
])
def test_backup_schedules(schedule, expected):
    from mlox_iac.config.model import parse_schedule

    assert parse_schedule(schedule) == expected


def test_several_problems_give_one_line_each(tmp_path):
    path = write_stack(tmp_path, settings(volume_size_gb=1, domian="x", hetzner={"server_type": "nope"}))
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert len(error.value.problems) == 3
    assert all(line.startswith(f"{path}: mlox:") for line in error.value.problems)


# Whole files that are not a usable stack file: content -> the one line after "FILE: ".
_VALID = f"""config:
  mlox:provider: hetzner
  mlox:hetzner: {{location: fsn1, server_type: cx23}}
  mlox:ssh: {{public_keys: ["{KEY}"], admin_cidrs: [203.0.113.7/32]}}
"""
FILE_CASES = {
    "truncated_flow": (b"config: [1, 2", "not valid YAML (line 1): expected ',' or ']', but got '<stream end>'"),
    "list_document": (b"- just a list", "must be a mapping with a config: key (found a list)"),
    "scalar_document": (b"hello", "must be a mapping with a config: key (found a string)"),
    "config_not_mapping": (b"config: 3", "config: must be a mapping of keys to values"),
    "empty_file": (b"", "is empty (allowed: a mapping with a config: key holding mlox: settings)"),
    "only_comments": (b"# nothing here\n\n", "is empty (allowed: a mapping with a config: key holding mlox: settings)"),
    "not_utf8": (b"config:\n  mlox:provider: hetzn\xe9r\n",
                 "not UTF-8 text (byte 0xe9 at offset 30; allowed: a stack file in UTF-8)"),
    "utf16": (_VALID.encode("utf-16"), "not UTF-8 text (byte 0xff at offset 0; allowed: a stack file in UTF-8)"),
    "binary_nul": (b"config:\x00\x01", "not valid YAML: character #x0000 at offset 7 is not allowed (allowed: printable text)"),
    "duplicate_top_level_config_key": (_VALID.replace("mlox:provider: hetzner", "mlox:provider: hetzner\n  mlox:provider: aws").encode(),
        "mlox:provider: duplicate key on lines 2 and 3 (allowed: each key once, as Pulumi requires)"),
    "duplicate_nested_key": (b"config:\n  mlox:hetzner:\n    server_type: cx23\n    server_type: cx53\n",
        "mlox:hetzner.server_type: duplicate key on lines 3 and 4 (allowed: each key once, as Pulumi requires)"),
    "duplicate_config_block": (b"config: {}\nconfig: {}\n",
        "config: duplicate key on lines 1 and 2 (allowed: each key once, as Pulumi requires)"),
    "unknown_top_level_key": (_VALID.replace("config:", "confg:").encode(), "confg: unknown key (did you mean 'config'?)"),
    "namespace_typo": (_VALID.replace("mlox:provider", "mlx:provider").encode(),
        "mlx:provider: unknown namespace (did you mean 'mlox:provider'?)"),
    "namespace_confusable": (_VALID.replace("mlox:hetzner", "ml\u043ex:hetzner").encode(),
        "ml\u043ex:hetzner: unknown namespace (did you mean 'mlox:hetzner'?)"),
    "alias_bomb": (b"config:\n  mlox:x: &a [1,1,1,1,1,1,1,1,1,1]\n" + b"".join(
        f"  mlox:x{i}: &a{i} [*{'a' if i == 1 else f'a{i - 1}'},*{'a' if i == 1 else f'a{i - 1}'},*{'a' if i == 1 else f'a{i - 1}'},*{'a' if i == 1 else f'a{i - 1}'},*{'a' if i == 1 else f'a{i - 1}'},*{'a' if i == 1 else f'a{i - 1}'},*{'a' if i == 1 else f'a{i - 1}'},*{'a' if i == 1 else f'a{i - 1}'},*{'a' if i == 1 else f'a{i - 1}'},*{'a' if i == 1 else f'a{i - 1}'}]\n".encode()
        for i in range(1, 10)),
        "mlox:x3: expands to more than 10000 values through aliases (allowed: at most 10000)"),
    "self_referring_alias": (b"config:\n  mlox:services: &s [*s]\n",
        "mlox:services[0]: refers to itself through an alias (allowed: aliases to finished values)"),
    "huge_integer": (b"config:\n  mlox:volume_size_gb: " + b"9" * 5000 + b"\n",
        "mlox:volume_size_gb: number with 5000 digits (allowed: at most 30)"),
    "deep_nesting": (b"config:\n  mlox:services: " + b"[" * 70 + b"]" * 70 + b"\n",
        "mlox:services[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
        "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: "
        "nested too deeply (allowed: at most 64 levels)"),
    "tab_indentation": (b"config:\n\tmlox:provider: hetzner\n",
        "not valid YAML (line 2): found character '\\t' that cannot start any token"),
    "python_tag": (b"config: !!python/object:os.system {}\n",
        "not valid YAML (line 1): could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_unusable_files(tmp_path, case):
    content, expected = FILE_CASES[case]
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert error.value.problems == [f"{path}: {expected}"]


def test_directory_missing_and_unreadable_files(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as error:
        load_file(tmp_path)
    assert error.value.problems == [f"{tmp_path}: is a directory (allowed: a stack file)"]
    with pytest.raises(ConfigError) as error:
        load_file(tmp_path / "Pulumi.none.yaml")
    assert error.value.problems == [f"{tmp_path / 'Pulumi.none.yaml'}: file not found"]
    locked = write_stack(tmp_path, settings())

    def denied(self, *args, **kwargs):  # the tests run as root, for whom mode 000 is no obstacle
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ConfigError) as error:
        load_file(locked)
    assert error.value.problems == [f"{locked}: cannot be read: Permission denied"]


def test_large_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "Pulumi.big.yaml"
    path.write_bytes(b"# " + b"x" * (2 << 20))
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert error.value.problems == [f"{path}: larger than 1024 KiB (allowed: a stack file of a few KiB)"]


def test_anchors_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "Pulumi.anchors.yaml"
    path.write_text(_VALID + "  mlox:services:\n    seaweedfs: &store {buckets: [data]}\n"
                    "    mlflow: {enabled: true}\n  other:copy:\n    <<: *store\n")
    assert load_file(path).service("seaweedfs").buckets == ["data"]


def test_valid_stack_keeps_other_namespaces_and_defaults(tmp_path):
    raw = settings()
    path = write_stack(tmp_path, raw)
    text = path.read_text().replace("config:\n", "config:\n  hcloud:token:\n    secure: v1:abc\n")
    path.write_text(text)
    config = load_file(path)
    assert config.provider == "hetzner"
    assert config.enabled_services() == ["postgres", "seaweedfs", "mlflow", "home", "caddy"]
    assert config.stack_name == "test"
    assert config.keep_data_on_destroy is True


CORE = ["postgres", "seaweedfs", "mlflow", "home", "caddy"]
FULL = ["postgres", "seaweedfs", "mlflow", "redis", "feast", "label-studio", "airflow", "jupyter", "serving", "monitoring",
        "home", "caddy"]
PRESET_CASES = {
    "no_preset_is_core": ({}, CORE),
    "core": ({"preset": "core"}, CORE),
    "full": ({"preset": "full"}, FULL),
    "core_plus_one": ({"preset": "core", "jupyter": {"enabled": True}}, ["postgres", "seaweedfs", "mlflow", "jupyter", "home", "caddy"]),
    "full_minus_one": ({"preset": "full", "jupyter": {"enabled": False}}, [s for s in FULL if s != "jupyter"]),
    "core_minus_mlflow": ({"mlflow": {"enabled": False}}, ["postgres", "seaweedfs", "home", "caddy"]),
    "settings_alone_do_not_enable": ({"preset": "core", "redis": {}}, CORE),
    "explicit_true_in_full": ({"preset": "full", "redis": {"enabled": True}}, FULL),
}


@pytest.mark.parametrize("case", sorted(PRESET_CASES))
def test_presets_and_overrides(tmp_path, case):
    services, expected = PRESET_CASES[case]
    config = load_file(write_stack(tmp_path, settings("onprem", services=services)))
    assert config.enabled_services() == expected


EXAMPLES = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.example-*.yaml"))


def test_the_examples_are_found():
    assert {"example-hetzner", "example-digitalocean", "example-aws", "example-onprem", "example-full"} <= set(EXAMPLES)


@pytest.mark.parametrize("stack", EXAMPLES)
def test_example_stacks_validate_without_warnings(stack):
    from mlox_iac.pricing import smaller_size_warning

    config = load_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml")
    assert config.warnings() == []
    assert smaller_size_warning(config) is None  # each example's size is the cheapest that holds it


def test_the_full_example_enables_every_service():
    from mlox_iac.components.services.registry import SERVICES

    config = load_file(ROOT / "stacks" / "Pulumi.example-full.yaml")
    assert config.enabled_services() == list(SERVICES)
    assert [m.name for m in config.service("serving").models] == ["churn"]


def test_cli_validate_exit_codes(tmp_path):
    bad = write_stack(tmp_path, settings(volume_size_gb=5))
    cli = [sys.executable, "-m", "mlox_iac.cli.main"]
    result = subprocess.run([*cli, "validate", "--file", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr == f"{bad}: mlox:volume_size_gb: 5 is too small (allowed: 10 or more)\n"
    assert "Traceback" not in result.stderr + result.stdout
    good = subprocess.run([*cli, "validate", "--stack", "example-hetzner"], capture_output=True, text=True, cwd=ROOT)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("ok: stacks/Pulumi.example-hetzner.yaml is valid (hetzner;")


def test_schema_describes_mlox_keys():
    result = subprocess.run([sys.executable, "-m", "mlox_iac.cli.main", "schema"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert "mlox:provider" in schema["properties"]
    assert "mlox:services" in schema["properties"]
    assert schema["required"] == ["mlox:provider", "mlox:ssh"]
    assert schema["additionalProperties"] is False


def test_external_credentials_must_be_secrets(tmp_path):
    raw = settings(services={"seaweedfs": {"external": S3}, "postgres": {"external": PG}})
    path = write_stack(tmp_path, raw, secure=())
    with pytest.raises(ConfigError) as error:
        load_file(path)
    assert error.value.problems == [
        f"{path}: mlox:services.postgres.external.admin_password: must be a secret "
        "(set it with: pulumi config set --secret --path 'mlox:services.postgres.external.admin_password' < FILE)",
        f"{path}: mlox:services.seaweedfs.external.access_key_id: must be a secret "
        "(set it with: pulumi config set --secret --path 'mlox:services.seaweedfs.external.access_key_id' < FILE)",
        f"{path}: mlox:services.seaweedfs.external.secret_access_key: must be a secret "
        "(set it with: pulumi config set --secret --path 'mlox:services.seaweedfs.external.secret_access_key' < FILE)",
    ]


def test_external_parts_say_plainly_that_backups_do_not_cover_them(tmp_path):
    config = load_file(write_stack(tmp_path, settings(services={"seaweedfs": {"external": S3}, "postgres": {"external": PG}})))
    assert config.warnings() == [
        ("services.seaweedfs.external", "backups do not cover the buckets on the external store: protect them with "
         "the provider's own versioning or replication (mlox:backup keeps only what runs on the server)"),
        ("services.postgres.external", "backups do not cover the databases on the external server: protect them "
         "with the provider's own backups and point-in-time recovery (mlox:backup keeps only what runs on the server)"),
    ]
    done = subprocess.run([sys.executable, "-m", "mlox_iac.cli.main", "validate", "--file", str(tmp_path / "Pulumi.test.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "backups do not cover the buckets on the external store" in done.stderr


@pytest.mark.parametrize("move, external, local", [
    # (part_move, services use the external store, the server runs its own)
    (None, True, False),
    ("not_in_use", False, True),  # the settings kept, the buckets on the server (after a move home)
    ({"part": "objects", "to": "external", "state": "copying"}, False, True),
    ({"part": "objects", "to": "external", "state": "cutover"}, True, True),
    ({"part": "objects", "to": "local", "state": "copying"}, True, True),
    ({"part": "objects", "to": "local", "state": "cutover"}, False, True),
    ({"part": "postgres", "to": "external", "state": "copying"}, True, False),  # another part moves
])
def test_which_side_each_part_uses_during_a_move(tmp_path, move, external, local):
    s3 = {**S3, "in_use": False} if move == "not_in_use" else S3
    raw = settings(services={"seaweedfs": {"external": s3}, "postgres": {"external": PG}},
                   **({"part_move": move} if isinstance(move, dict) else {}))
    config = load_file(write_stack(tmp_path, raw))
    assert (config.part_external("objects"), config.part_local("objects")) == (external, local)
