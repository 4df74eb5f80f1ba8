"""Pulumi components: the server, the stack, and one component per MLOps service."""
