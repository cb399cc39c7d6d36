"""The CLI contract: every verb answers --help, bench and demo own their options."""

from __future__ import annotations

import pytest

from p2pinfer.cli.main import main


@pytest.mark.parametrize("verb", ["node", "cluster", "infer", "status", "demo", "bench", "zoo"])
def test_every_verb_answers_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_demo_and_bench_take_leading_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--duration", "not-a-number"])
    assert exit_info.value.code == 2  # parsed by the demo's own parser: a usage error, not "unrecognized"
    assert "duration" in capsys.readouterr().err


def test_node_refuses_an_unknown_policy(capsys):
    with pytest.raises(SystemExit):
        main(["node", "--policy", "no-such-policy"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["0", "-1"])
def test_cluster_refuses_fewer_than_one_node(count, capsys):
    # it used to start nothing, then crash on the first node's url (None.url)
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", "--nodes", count])
    assert exit_info.value.code == 2
    assert "--nodes" in capsys.readouterr().err
