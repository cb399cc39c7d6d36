"""The CLI's tables keep every character of a name and a number, piped or at a narrow terminal."""

from __future__ import annotations

import io

from rich.console import Console

from p2pinfer.cli.console import PIPED_WIDTH, cli_console, cli_table
from p2pinfer.cli.main import main
from zoo.manifest import read_manifest


def _body_cells(text: str) -> list[str]:
    """Each body column's text, its folded lines joined back (one row in the table)."""
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    return ["".join(row[column].strip() for row in rows) for column in range(len(rows[0]))]


def test_zoo_list_piped_names_every_variant_whole(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for variant in read_manifest().variants.values():
        assert f" {variant.name} " in out, variant.name  # one line, the way grep finds it
        assert f"{variant.params_total:,}" in out


def test_a_piped_console_is_wide_and_columns_still_rules(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert cli_console().width == PIPED_WIDTH  # pytest's capture is not a terminal
    monkeypatch.setenv("COLUMNS", "91")
    assert cli_console().width == 91


def test_a_narrow_terminal_folds_cells_instead_of_cutting_them():
    table = cli_table("narrow", ("variant", "family", "params", "accuracy per exit"), names=("variant",))
    table.add_row("text-orientation-r160", "text-orientation", "1,712,468", "0:0.908 1:0.998 2:1.000 3:1.000")
    out = io.StringIO()
    Console(file=out, width=48, color_system=None).print(table)
    text = out.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 48
    assert " text-orientation-r160 " in text  # the name on one line
    assert _body_cells(text) == ["text-orientation-r160", "text-orientation", "1,712,468",
                                 "0:0.9081:0.9982:1.0003:1.000"]  # folded, every character kept


def test_status_lists_every_variant_and_link_of_a_peer():
    from p2pinfer.cli.status import peers_table

    variants = [f"text-orientation-{name}" for name in ("w1", "int8", "p0.5", "r160")] + ["digits-cnn-w1"]
    links = {f"edge-{index}": {"rtt_ms": 2.0 + index, "bandwidth_mbps": 100.0} for index in range(5)}
    view = {"self": "pi", "peers": [{"node_id": "pi", "status": "alive", "address": "http://127.0.0.1:9",
                                     "variants": variants, "links": links}]}
    out = io.StringIO()
    Console(file=out, width=PIPED_WIDTH, color_system=None).print(peers_table(view))
    cells = [cell.replace(" ", "") for cell in _body_cells(out.getvalue())]  # long cells wrap at spaces
    assert cells[8] == ",".join(sorted(variants))
    assert cells[9] == "".join(f"edge-{index}:{2.0 + index:.1f}/100" for index in range(5))
