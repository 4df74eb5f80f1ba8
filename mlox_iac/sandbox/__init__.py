"""The sandbox: the whole stack on this machine, on a local Debian machine (systemd-nspawn).

``spec`` says what a sandbox is without touching anything (record, names, sizes, stack file,
refusals, cleanup list); ``manage`` does its steps on this machine; ``hosts`` boots the
machines (the end-to-end tests' target hosts too) and ``images`` builds stand-in images
where no container registry answers. The commands are in ``mlox_iac/cli/sandbox_cmds.py``.
"""
