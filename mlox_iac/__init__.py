"""mlox-iac: a complete self-hosted MLOps stack as Pulumi infrastructure-as-code."""

__version__ = "0.1.0"
