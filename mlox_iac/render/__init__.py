"""Pure renderers: config in, file text or shell commands out. No Pulumi, no I/O."""
