"""The CLI contract: every verb answers --help, bench and demo own their options, ``infer``
refuses bad input in one line and sends image files."""

from __future__ import annotations

import json

import numpy as np
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


@pytest.mark.parametrize("verb", ["node", "cluster"])
def test_node_and_cluster_refuse_an_unknown_policy_alike(verb, capsys):
    """``cluster`` takes the node's --policy choices: a typo is a usage error before any node starts."""
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--policy", "no-such-policy"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["0", "-1"])
def test_cluster_refuses_fewer_than_one_node(count, capsys):
    # it used to start nothing, then crash on the first node's url (None.url)
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", "--nodes", count])
    assert exit_info.value.code == 2
    assert "--nodes" in capsys.readouterr().err


@pytest.mark.parametrize(("arguments", "says"), [
    (["--digit", "3", "--family", "text-orientation"], "--digit sends a held-out digit"),
    (["--digit", "3", "--family", "nope"], "'nope' does not take"),
    (["--digit", "99999", "--family", "digits-resnet"], "--digit 99999: the held-out set has digits 0 to"),
    (["--input", "/nonexistent/input.npy"], "--input /nonexistent/input.npy"),
    (["--image", "/nonexistent/page.jpg"], "--image /nonexistent/page.jpg"),
    (["--image", __file__], "takes a JPEG or PNG file"),
])
def test_infer_refuses_bad_input_in_one_line_before_sending(arguments, says, capsys):
    assert main(["infer", "http://127.0.0.1:9", *arguments]) == 2  # nothing listens there: nothing was sent
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_infer_refuses_a_pickled_input_file(tmp_path, capsys):
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"not": "a tensor"}], dtype=object), allow_pickle=True)
    assert main(["infer", "http://127.0.0.1:9", "--input", str(pickled)]) == 2
    assert "pickled" in capsys.readouterr().err.lower()


def test_a_nodes_refusal_is_its_typed_error_and_exit_1(capsys):
    assert main(["infer", "http://127.0.0.1:9", "--digit", "1"]) == 1  # nothing listens: no node reached
    assert "error (connection_failed)" in capsys.readouterr().err


def test_infer_sends_an_image_file_to_a_node(node_factory, tmp_path, capsys):
    from zoo import orientation_data
    from zoo.manifest import PRETRAINED_ZOO_DIR

    node = node_factory("--zoo", str(PRETRAINED_ZOO_DIR), "--variants", "text-orientation-r160")
    page = tmp_path / "page.jpg"
    orientation_data.sample(orientation_data.HELD_OUT_SEED, 2).image.save(page, "JPEG", quality=90)
    assert main(["infer", node.url, "--image", str(page), "--family", "text-orientation",
                 "--variant", "text-orientation-r160", "--deadline-ms", "30000"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["label"] == 2 and answer["variant"] == "text-orientation-r160"  # the page is rotated 180


@pytest.mark.parametrize(("arguments", "says"), [
    (["zoo", "show", "nope"], "p2pinfer zoo: unknown variant 'nope'; known: "),
    (["zoo", "show", "text-orientation-w1"], "(it is in the pretrained zoo: add --zoo "),
    (["zoo", "profile", "text-orientation-r160"], "(it is in the pretrained zoo: add --zoo "),
    (["zoo", "list", "--zoo", "/nonexistent/zoo"], "no manifest at /nonexistent/zoo/manifest.json: a zoo directory"),
])
def test_zoo_commands_say_what_is_missing_in_one_line(arguments, says, capsys):
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_node_asked_for_the_pretrained_family_without_its_zoo_says_where_it_is(capsys):
    assert main(["node", "--port", "0", "--variants", "text-orientation:0-2"]) == 2
    err = capsys.readouterr().err
    assert "cannot start: unknown variant 'text-orientation'" in err and "add --zoo " in err
    assert main(["node", "--port", "0", "--variants", "nope"]) == 2
    assert "pretrained" not in capsys.readouterr().err  # no hint where none applies


def test_cluster_says_which_node_did_not_start_and_why(capsys):
    assert main(["cluster", "--nodes", "2", "--profiles", "no-such-profile"]) == 2  # a real node process, refused
    err = capsys.readouterr().err
    assert "p2pinfer cluster: node-0 did not start" in err and "unknown device profile 'no-such-profile'" in err
    assert "Traceback" not in err


def test_cluster_serves_the_zoo_it_is_given(tmp_path):
    """``cluster --zoo zoo/pretrained``: every node serves the real family (real processes)."""
    import signal
    import subprocess
    import sys
    import urllib.request

    from p2pinfer.testing import wait_until
    from zoo.manifest import PRETRAINED_ZOO_DIR

    log = tmp_path / "cluster.log"
    with log.open("w") as out:
        cluster = subprocess.Popen([sys.executable, "-m", "p2pinfer", "cluster", "--nodes", "2", "--zoo",
                                    str(PRETRAINED_ZOO_DIR), "--variants", "text-orientation-r160"],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "try: p2pinfer status" in log.read_text() or cluster.poll() is not None, timeout_s=120,
                   message="the cluster's nodes to be up")
        urls = [line.split(": ", 1)[1].strip() for line in log.read_text().splitlines() if line.startswith("node-")]
        assert len(urls) == 2, log.read_text()
        for url in urls:
            with urllib.request.urlopen(f"{url}/v2/models/text-orientation", timeout=10) as answer:
                assert json.loads(answer.read())["name"] == "text-orientation"
    finally:
        cluster.send_signal(signal.SIGINT)
        try:
            cluster.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cluster.kill()
            cluster.wait()


@pytest.mark.parametrize(("arguments", "says"), [
    (["--drain-timeout", "nan"], "--drain-timeout must be a finite number of seconds >= 0, got nan"),
    (["--drain-timeout", "inf"], "--drain-timeout must be a finite number of seconds >= 0, got inf"),
    (["--drain-timeout", "-1"], "--drain-timeout must be a finite number of seconds >= 0, got -1.0"),
    (["--node-id", "a b"], "--node-id 'a b' has characters outside"),
    (["--node-id", "n" * 129], "--node-id is 129 characters long, over the limit of 128"),
])
def test_a_node_refuses_a_bad_drain_timeout_or_node_id_at_start_in_one_line(arguments, says, capsys):
    """A NaN drain deadline used to be accepted and fail at SIGTERM without draining; an id the
    routes refuse in a plan used to be accepted too."""
    assert main(["node", *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2pinfer node: cannot start: ") and says in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
