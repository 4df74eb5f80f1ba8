"""``cost``: what a stack costs per month, and what managed equivalents would cost."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

import typer

from mlox_iac.cli.common import FileOpt, JsonOpt, Out, StackOpt, passphrase_prompt, project_dir, stack_path
from mlox_iac.errors import PulumiCliMissing

LiveOpt = typer.Option(False, "--live", help="Read today's prices from the provider's API with the stack's token "
                       "(HCLOUD_TOKEN / DIGITALOCEAN_TOKEN, else the stack's hcloud:token / digitalocean:token) "
                       "instead of the built-in table")


def cost(stack: Optional[str] = StackOpt, file: Optional[Path] = FileOpt, as_json: bool = JsonOpt,
         live: bool = LiveOpt) -> None:
    """Monthly cost of a stack: server, data volume, public IPv4, and backup storage as
    mlox:backup configures it (none without it; none on the server's own disk; an S3
    repository at the price of the store it points at).

    Beside it, dated list prices of managed services that do what each enabled service
    does, and one closing line: what the stack costs here against the managed set. The
    built-in prices carry their source and the date they were read; --live asks the
    provider's API instead (Hetzner, DigitalOcean).

    Examples:
      mlox-iac cost --stack example-hetzner
      mlox-iac cost --stack prod --live --json
    """
    from mlox_iac import pricing
    from mlox_iac.config.loader import load_file

    config = load_file(stack_path(stack, file))
    prices = pricing.builtin_prices(config)
    if live:
        if prices is None:
            pricing.live_token(config.provider)  # the one-line error for a provider without prices
        prices = pricing.live_prices(config, prices, stack_config=_stack_secret(stack) if file is None else None)
    result = pricing.report(config, prices, datetime.date.today())
    Out(as_json).data(result.to_dict(), lambda console, _: _print(console, result))


def _stack_secret(stack: Optional[str]):
    """Read one of the stack's config values through the engine (it decrypts secrets);
    None where the Pulumi CLI is missing, so the caller names the variable to set instead."""
    def read(key: str) -> Optional[str]:
        from mlox_iac import automation

        try:
            return automation.config_value(stack, key, project_dir=project_dir(), passphrase_prompt=passphrase_prompt())
        except PulumiCliMissing:
            return None

    return read if stack else None


def _money(value: float | None, currency: str | None) -> str:
    return f"{'unknown':>12}" if value is None else f"{value:8.2f} {currency or ''}".rstrip()


def _print(console, result) -> None:
    console.print(f"Monthly cost of stack {result.stack} ({result.provider}):")
    for line in result.lines:
        console.print(f"  {line.item:<15} {line.detail:<48} {_money(line.monthly, line.currency)}")
    if result.currency:
        if result.summary.here_complete:
            total = " + ".join(_money(value, currency).strip() for currency, value in result.totals.items())
            total = f"{total:>12}"
        else:
            total = "incomplete: a price is unknown"
        console.print(f"  {'total':<15} {'':<48} {total}")
    console.print(f"Backups: {result.backup}.")
    if result.currency is None:
        console.print("On-prem: the host is yours; nothing is paid to a provider for it.")
    elif result.read_on is None:
        console.print(f"Prices read live from {result.source}.")
    else:
        console.print(f"Prices from {result.source}, read on {result.read_on} ({result.age_days} days ago); "
                      "--live reads today's where the provider publishes them.")
    if result.managed:
        console.print("Managed equivalents of the enabled services (list prices, smallest tier):")
        for row in result.managed:
            price = _money(row.monthly, row.currency) if row.monthly is not None else "no flat price"
            note = f"; {row.note}" if row.note else ""
            console.print(f"  {row.service:<12} {row.offer:<66} {price:>13}  ({row.source}, read {row.read_on}{note})")
    console.print(f"{result.summary.line}.")
