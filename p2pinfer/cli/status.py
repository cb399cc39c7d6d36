"""``p2pinfer status URL``: the cluster as one node sees it, as a rich table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from p2pinfer.cli.console import cli_console, cli_table
from p2pinfer.errors import P2PError


def _cell(record: dict[str, Any], *path: str, default: Any = "") -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def peers_table(view: dict[str, Any]) -> Table:
    coordinator = view.get("coordinator")
    title = f"cluster seen from {view.get('self', '?')}" + (f" · coordinator {coordinator}" if coordinator else "")
    table = cli_table(title,
                      ("node", "status", "address", "queue", "in flight", "util", "temp °C", "throttle", "variants",
                       "links (rtt ms / Mbit/s)"), names=("node", "address"))
    for record in view.get("peers", []):
        node_id = record.get("node_id", "?")
        links = record.get("links") or {}
        link_text = " ".join(
            f"{peer}:{_cell(link, 'rtt_ms', default=0):.1f}/{_cell(link, 'bandwidth_mbps', default=0):.0f}"
            for peer, link in sorted(links.items()))
        variants = record.get("variants") or []
        table.add_row(
            node_id + (" ★" if node_id == coordinator else ""),
            str(record.get("status", "ok")),
            str(record.get("address") or record.get("url", "")),
            str(_cell(record, "load", "queue_depth", default=record.get("queue_depth", ""))),
            str(_cell(record, "load", "in_flight", default=record.get("in_flight", ""))),
            f"{_cell(record, 'load', 'utilisation', default=0.0):.2f}",
            f"{_cell(record, 'thermal', 'temperature_c', default=0.0):.1f}",
            f"{_cell(record, 'thermal', 'throttle', default=1.0):.2f}",
            ", ".join(sorted(variants)),
            link_text,
        )
    return table


def units_table(health: dict[str, Any]) -> Table:
    """The node's compute units and backends (``/v1/health``): why a backend is missing, too."""
    table = cli_table(f"units and backends of {health.get('node_id', '?')}",
                      ("unit / backend", "runs on", "precision", "speed or reason", "warm-up"),
                      names=("unit / backend",))
    for unit in health.get("units", []):
        warm = unit.get("warmup", {})
        table.add_row(unit.get("name", "?"), unit.get("backend", ""), unit.get("precision", ""), unit.get("speed", ""),
                      f"batches {warm.get('batch_sizes', [])} in {warm.get('seconds', 0):.1f} s")
    for backend in health.get("backends", []):
        available = backend.get("available", False)
        table.add_row(f"backend {backend.get('name', '?')}",
                      ", ".join(backend.get("devices", [])) if available else "-",
                      ", ".join(backend.get("precisions", [])) if available else "-",
                      backend.get("detail", "") if available else f"unavailable: {backend.get('reason', '')}", "")
    return table


def show_status(url: str, console: Console | None = None) -> int:
    from p2pinfer.client import Client

    console = console or cli_console()
    try:
        with Client(url) as client:
            view = client.peers()
            health = client.health()
    except P2PError as error:
        console.print(f"[red]cannot read {url}: {error.message}")
        return 1
    console.print(peers_table(view))
    console.print(units_table(health))
    return 0
