"""Scenario files: every bundled one loads; a malformed one fails naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from benchmarks.cluster_run import directed_links, links_document
from benchmarks.scenario import (
    SCENARIOS_DIR,
    ScenarioError,
    load_scenario,
    parse_scenario,
    with_duration,
    with_family,
    with_nodes,
    with_traces,
)

BASE = {
    "duration_s": 10, "seed": 1,
    "cluster": {"nodes": [{"name": "a", "device_profile": "rpi4"}, {"name": "b", "device_profile": "edge-server"}]},
    "links": {"a<->b": {"bandwidth_mbps": 20, "rtt_ms": 5}},
    "users": [{"group": "g", "count": 2, "rate_per_s": 2.0, "deadline": {"kind": "fixed", "ms": 50}}],
    "events": [{"at_s": 5, "kind": "kill", "node": "b"}],
}


def document(**changes) -> dict:
    result = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = result
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is ...:
            del target[keys[-1]]
        elif isinstance(target, list):
            target[int(keys[-1])] = value
        else:
            target[keys[-1]] = value
    return result


def test_every_bundled_scenario_loads():
    names = sorted(path.stem for path in SCENARIOS_DIR.glob("*.toml"))
    assert {"steady", "bandwidth-trace", "thermal", "load-swing", "node-failure", "fairness", "demo"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name and scenario.nodes and scenario.users
    assert len(load_scenario("demo").nodes) == 4
    # the demo runs the real pretrained family; its digits version stays runnable by name
    from zoo.manifest import PRETRAINED_ZOO_DIR

    assert load_scenario("demo").zoo_dir == PRETRAINED_ZOO_DIR
    assert {group.family for group in load_scenario("demo").users} == {"text-orientation"}
    assert load_scenario("demo-digits").zoo_dir is None
    # the robots' control loops take no answer below 85 % held-out accuracy, and the requests say so
    robots = [group for group in load_scenario("bandwidth-trace").users if group.group == "robot"]
    assert robots and robots[0].min_accuracy == 0.85


@pytest.mark.parametrize(("changes", "field"), [
    ({"duration_s": ...}, "duration_s"),
    ({"duration_s": -1}, "duration_s"),
    ({"colour": "red"}, "colour"),
    ({"zoo": "/no/such/zoo"}, "zoo"),
    ({"cluster__nodes__0__device_profile": "pdp-11"}, "cluster.nodes[0].device_profile"),
    ({"cluster__nodes__1__name": "a"}, "cluster.nodes"),
    ({"cluster__nodes__0__variants": "no-such-model"}, "cluster.nodes[0].variants"),
    ({"cluster__nodes__0__threads": 0}, "cluster.nodes[0].threads"),
    ({"cluster__nodes__0__cpu_backend": "tensorflow"}, "cluster.nodes[0].cpu_backend"),
    ({"users__0__rate_per_s": ...}, "users[0].rate_per_s"),
    ({"users__0__think_ms": 100}, "users[0].rate_per_s"),
    ({"users__0__deadline": {"kind": "gaussian"}}, "users[0].deadline.kind"),
    ({"users__0__deadline": {"kind": "uniform", "low_ms": 50, "high_ms": 10}}, "users[0].deadline.high_ms"),
    ({"users__0__deadline": {"kind": "fixed", "ms": -3}}, "users[0].deadline.ms"),
    ({"users__0__qoe": {"accuracy": -1}}, "users[0].qoe.accuracy"),
    ({"users__0__family": "imagenet"}, "users[0].family"),
    ({"users__0__entry": ["z"]}, "users[0].entry"),
    ({"users__0__min_accuracy": 1.5}, "users[0].min_accuracy"),
    ({"users__0__min_accuracy": -0.1}, "users[0].min_accuracy"),
    ({"users__0__count": 0}, "users"),
    ({"events__0__at_s": 11}, "events[0].at_s"),
    ({"events__0__kind": "explode"}, "events[0].kind"),
    ({"events__0__node": "z"}, "events[0].node"),
    ({"events__0": {"at_s": 1, "kind": "users", "args": {"group": "nobody", "count": 2}}}, "events[0].args.group"),
    ({"events__0": {"at_s": 1, "kind": "heat", "node": "a", "args": {"temperature_c": 900}}},
     "events[0].args.temperature_c"),
    ({"links": {"a->z": {"bandwidth_mbps": 1}}}, "links.a->z"),
    ({"links": {"a<->b": {"bandwidth_mbps": -1}}}, "links"),
    ({"links": {"a<->b": {"trace": "no/such/trace.txt"}}}, "links"),
    ({"links": {"a<->b": {"colour": 1}}}, "links"),
    ({"feedback_share": 1.5}, "feedback_share"),
])
def test_validation_names_the_field(changes, field):
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(document(**changes))
    assert caught.value.field == field, str(caught.value)
    assert field.split("[")[0] in str(caught.value)


def test_toml_errors_are_typed(tmp_path: Path):
    broken = tmp_path / "broken.toml"
    broken.write_text("duration_s = [\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(broken)
    assert caught.value.field == "toml"
    with pytest.raises(ScenarioError) as caught:
        load_scenario("no-such-scenario")
    assert "steady" in str(caught.value)


def test_duration_override_scales_events():
    scenario = load_scenario("node-failure")
    shorter = with_duration(scenario, scenario.duration_s / 6)
    assert [event.at_s for event in shorter.events] == pytest.approx([event.at_s / 6 for event in scenario.events])
    with pytest.raises(ScenarioError):
        with_duration(scenario, 0)


def test_trace_override_takes_any_file_or_folder(tmp_path: Path):
    folder = tmp_path / "traces"
    folder.mkdir()
    for index in range(2):
        (folder / f"t{index}.log").write_text("# my own trace\n0 1.5\n0.5 3.0\n1.0 0.0\n1.5 2.0\n")
    scenario = parse_scenario(document())
    traced = with_traces(scenario, folder, 4.0)
    (table,) = traced.links.values()
    assert Path(table["trace"]).name == "t0.log" and table["trace_scale"] == 4.0 and "bandwidth_mbps" not in table
    single = with_traces(scenario, folder / "t1.log")
    assert Path(next(iter(single.links.values()))["trace"]).name == "t1.log"
    (folder / "bad.txt").write_text("0 1\nnot a number\n")
    with pytest.raises(ScenarioError):
        with_traces(scenario, folder / "bad.txt")
    with pytest.raises(ScenarioError):
        with_traces(scenario, tmp_path / "missing")


def test_links_per_node_and_subsets():
    scenario = parse_scenario(document(links={"a->b": {"bandwidth_mbps": 20, "rtt_ms": 5},
                                              "b->a": {"bandwidth_mbps": 2, "rtt_ms": 5}}))
    assert directed_links(scenario)[("b", "a")]["bandwidth_mbps"] == 2
    assert links_document(scenario, "a")["links"] == {"a->b": {"bandwidth_mbps": 20, "rtt_ms": 5}}
    mirrored = parse_scenario(document(links={"a->b": {"bandwidth_mbps": 20}}))
    assert set(directed_links(mirrored)) == {("a", "b"), ("b", "a")}
    traced = links_document(load_scenario("bandwidth-trace"), "pi")
    assert all(Path(table["trace"]).is_absolute() for table in traced["links"].values())
    small = with_nodes(load_scenario("node-failure"), ["pi", "edge"])
    assert [node.name for node in small.nodes] == ["pi", "edge"] and set(small.links) == {"pi<->edge"}
    assert {event.kind for event in small.events} == {"kill", "restart"}
    assert not with_nodes(load_scenario("thermal"), ["pi", "edge"]).events


def test_node_arguments_give_the_node_the_config_the_harness_built(tmp_path: Path):
    """What the harness passes reads back, through the node's own parser, as the same
    ``NodeConfig``: the harness follows the node's flags without reading its help."""
    from benchmarks.cluster_run import ScenarioCluster
    from p2pinfer.cli.main import build_parser, node_config_from

    scenario = parse_scenario(document(cluster={"nodes": [
        {"name": "a", "device_profile": "rpi4", "variants": "digits-cnn", "threads": 2, "queue_capacity": 8,
         "max_batch": 1, "workers": 2},
        {"name": "b", "device_profile": "edge-server"}]}))
    cluster = ScenarioCluster(scenario, "thompson", tmp_path, "secret-1", [])
    for spec, seed, port in ((scenario.nodes[0], None, 0), (scenario.nodes[1], "127.0.0.1:9", 4567)):
        config = cluster.node_config(spec, seed, port)
        arguments = cluster.node_arguments(spec, seed, port)
        assert node_config_from(build_parser().parse_args(["node", *arguments])) == config
    first = cluster.node_config(scenario.nodes[0], None)
    assert (first.threads, first.queue_capacity, first.max_batch, first.workers, first.policy) == (2, 8, 1, 2,
                                                                                                   "thompson")
    assert first.links_file and json.loads(Path(first.links_file).read_text())["links"] == {
        "a->b": {"bandwidth_mbps": 20, "rtt_ms": 5}}


def test_a_config_field_without_a_flag_is_refused():
    from benchmarks.cluster_run import BenchError, node_flags
    from p2pinfer.runtime.node import NodeConfig

    assert node_flags(NodeConfig()) == []
    with pytest.raises(BenchError, match="mdns"):
        node_flags(NodeConfig(mdns=True))


def test_unknown_policy_is_refused_before_any_node_starts(tmp_path: Path, monkeypatch, capsys):
    import p2pinfer.cli.cluster
    from benchmarks.bench import main as bench_main
    from benchmarks.bench import run_benchmark
    from benchmarks.policies import UnknownPolicy, check_policies

    def no_node(*arguments, **options):
        raise AssertionError("a node was started")

    monkeypatch.setattr(p2pinfer.cli.cluster, "start_node", no_node)
    assert check_policies([" LinUCB", "epsilon_greedy", "linucb", ""]) == ["linucb", "epsilon-greedy"]
    with pytest.raises(UnknownPolicy) as raised:
        check_policies(["linucb", "ucb2", "neurosurgeon", "bogus"])
    assert raised.value.unknown == ["ucb2", "bogus"]
    assert "'ucb2', 'bogus'" in str(raised.value) and "known:" in str(raised.value)
    assert all(name in str(raised.value) for name in ("linucb", "edgent", "fixed", "discounted-thompson"))
    with pytest.raises(UnknownPolicy):
        run_benchmark(load_scenario("steady"), ["fixed", "bogus"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert bench_main(["steady", "--policies", "fixed,bogus", "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    assert "unknown policy 'bogus'" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "cli").exists()


def test_default_policies_are_the_node_contract():
    from benchmarks.policies import ADAPTIVE_POLICIES, DEFAULT_POLICIES, STATIC_BASELINES, is_adaptive
    from p2pinfer.planning.selection import known_policies

    assert DEFAULT_POLICIES == ("fixed", "random", "local-only", "full-offload", "neurosurgeon", "edgent", "linucb",
                                "thompson", "mulinucb", "epsilon-greedy")
    assert set(DEFAULT_POLICIES) <= set(known_policies())
    assert all(is_adaptive(name) for name in (*ADAPTIVE_POLICIES, "discounted-linucb", "linucb+mask"))
    assert not any(is_adaptive(name) for name in (*STATIC_BASELINES, "fixed", "random"))


def test_policy_names_match_with_detail():
    from benchmarks.policies import same_policy

    assert same_policy("linucb", "LinUCB") and same_policy("epsilon_greedy", "epsilon-greedy")
    assert same_policy("linucb+mask", "linucb") and not same_policy("linucbx", "linucb")
    assert not same_policy("fixed", "random")


def test_a_node_may_run_its_cpu_blocks_on_onnxruntime():
    """``cpu_backend`` reaches the node's command line (``--cpu-backend``); unset, no flag."""
    from benchmarks.cluster_run import node_flags
    from p2pinfer.runtime.node import NodeConfig

    scenario = parse_scenario(document(cluster__nodes__0__cpu_backend="onnxruntime"))
    first, second = scenario.nodes[:2]
    assert first.cpu_backend == "onnxruntime" and second.cpu_backend == "auto"
    assert scenario.as_dict()["nodes"][0]["cpu_backend"] == "onnxruntime"
    assert node_flags(NodeConfig(cpu_backend="cpu-eager")) == ["--cpu-backend", "cpu-eager"]
    assert node_flags(NodeConfig()) == []


def test_any_scenario_runs_on_the_real_family():
    """``bench SCENARIO --family text-orientation``: every node hosts it, every user asks for it,
    and the zoo that holds it (the pretrained one) comes with it; an unknown family is refused."""
    from zoo.manifest import PRETRAINED_ZOO_DIR

    traced = with_family(load_scenario("bandwidth-trace"), "text-orientation")
    assert traced.zoo_dir == PRETRAINED_ZOO_DIR
    assert {node.variants for node in traced.nodes} == {"text-orientation"}
    assert {group.family for group in traced.users} == {"text-orientation"}
    assert with_family(load_scenario("demo"), "digits-cnn", zoo="").zoo_dir is None
    with pytest.raises(ScenarioError, match="family"):
        with_family(load_scenario("steady"), "imagenet")
