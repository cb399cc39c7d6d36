"""Benchmark scenarios: a TOML file describing a cluster, its links, its users and timed events.

A scenario is the one input a benchmark needs, so every run can be repeated from the file
and its seed alone. It is parsed into frozen dataclasses and validated up front: a typo in
a 40-second benchmark must fail in the first millisecond, naming the field, not at second 39.

Layout (see ``benchmarks/scenarios/*.toml``)::

    name = "steady"            # optional, defaults to the file name
    description = "..."
    duration_s = 30            # how long arrivals are generated
    seed = 7                   # arrivals, inputs, deadlines, link jitter
    feedback_share = 0.2       # share of answered requests that get their true label back
    zoo = "pretrained"         # optional: the zoo every node serves (--zoo) and users are drawn from:
                               # "" the embedded digits zoo (default), "pretrained" zoo/pretrained, or a
                               # directory; users of a family with image preprocessing send JPEGs

    [[cluster.nodes]]
    name = "pi"                # also the node id
    device_profile = "rpi4"
    variants = "digits-cnn"    # all | family | variant[:first-last], comma separated
    threads = 1                # optional; also queue_capacity, max_batch, workers
    cpu_backend = "onnxruntime"  # optional: auto (default: onnxruntime where installed) | cpu-eager | onnxruntime

    [links."pi<->edge"]        # "a->b" one direction (mirrored if the reverse is not named), "a<->b" both
    bandwidth_mbps = 20
    rtt_ms = 10
    trace = "hsdpa-3g/norway_bus_1.txt"   # optional: replay a bandwidth trace instead
    trace_scale = 10
    [links.default]            # optional: every pair not named

    [[users]]
    group = "camera"
    count = 3
    rate_per_s = 2.0           # open loop: Poisson arrivals per user; or think_ms for closed loop
    family = "digits-cnn"
    entry = ["pi"]             # optional entry nodes (default: users spread over every node)
    qoe = { accuracy = 1.0, latency = 0.5, energy = 0.1 }
    deadline = { kind = "uniform", low_ms = 50, high_ms = 150 }

    [[events]]
    at_s = 10
    kind = "kill"              # kill | restart | heat | users
    node = "edge"
    args = {}                  # heat: {temperature_c = 85}; users: {group = "burst", count = 8}
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

from selector.qoe import QoEWeights

BENCHMARKS_DIR = Path(__file__).resolve().parent
SCENARIOS_DIR = BENCHMARKS_DIR / "scenarios"
TRACE_ROOTS: tuple[Path, ...] = (BENCHMARKS_DIR / "traces", BENCHMARKS_DIR.parent.parent / "shared" / "traces")
"""Where relative trace names are looked up: the project's copy first, then the shared folder."""

EVENT_KINDS = ("kill", "restart", "heat", "users")
DEADLINE_KINDS = ("fixed", "uniform", "lognormal")
MAX_DEADLINE_MS = 600_000.0
MAX_NODES = 64
MAX_USERS = 10_000


class HarnessError(Exception):
    """Base of every benchmark-harness error (the harness is not the node: no HTTP status)."""


class ScenarioError(HarnessError, ValueError):
    """A scenario is malformed; ``field`` names the offending key (dotted path)."""

    def __init__(self, field_name: str, message: str, source: str = "") -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field_name}: {message}")
        self.field = field_name
        self.source = source


@dataclass(frozen=True)
class NodeSpec:
    name: str
    device_profile: str = "native"
    variants: str = "digits-cnn"
    threads: int = 1
    queue_capacity: int | None = None
    max_batch: int | None = None
    workers: int | None = None
    cpu_backend: str = "auto"


@dataclass(frozen=True)
class DeadlineDistribution:
    """Per-request deadlines in milliseconds: fixed, uniform in [low, high], or lognormal
    around a median (clipped to [min_ms, max_ms], since a lognormal tail is unbounded)."""

    kind: str = "fixed"
    ms: float = 100.0
    low_ms: float = 0.0
    high_ms: float = 0.0
    median_ms: float = 0.0
    sigma: float = 0.5
    min_ms: float = 1.0
    max_ms: float = MAX_DEADLINE_MS

    @property
    def upper_bound_ms(self) -> float:
        """The largest deadline this distribution can produce (bounds client timeouts)."""
        if self.kind == "fixed":
            return self.ms
        if self.kind == "uniform":
            return self.high_ms
        return self.max_ms


@dataclass(frozen=True)
class UserGroup:
    """``count`` users alike; open loop (``rate_per_s``, Poisson) or closed loop (``think_ms``)."""

    group: str
    count: int
    family: str = "digits-cnn"
    rate_per_s: float | None = None
    think_ms: float | None = None
    qoe: QoEWeights = QoEWeights()
    deadline: DeadlineDistribution = DeadlineDistribution()
    entry: tuple[str, ...] = ()
    min_accuracy: float | None = None
    """A hard floor on the answer's held-out accuracy, sent with every request: a control loop
    cannot act on an answer right one time in ten, however fast."""

    @property
    def open_loop(self) -> bool:
        return self.rate_per_s is not None


@dataclass(frozen=True)
class Event:
    at_s: float
    kind: str
    node: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        target = self.node or self.args.get("group", "")
        extra = ",".join(f"{key}={value}" for key, value in self.args.items() if key != "group")
        return f"{self.kind} {target}" + (f" ({extra})" if extra else "")


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: float
    seed: int
    nodes: tuple[NodeSpec, ...]
    users: tuple[UserGroup, ...]
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    link_default: Mapping[str, Any] | None = None
    events: tuple[Event, ...] = ()
    feedback_share: float = 0.0
    description: str = ""
    source: str = ""
    zoo: str = ""  # "" (the embedded zoo), "pretrained" (zoo/pretrained) or a zoo directory

    @property
    def zoo_dir(self) -> Path | None:
        """The directory every node and the harness read the families from (None: the embedded zoo)."""
        if not self.zoo:
            return None
        if self.zoo == "pretrained":
            from zoo.manifest import PRETRAINED_ZOO_DIR

            return PRETRAINED_ZOO_DIR
        return Path(self.zoo)

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ScenarioError("node", f"no node named {name!r}", self.source)

    def group(self, name: str) -> UserGroup:
        for group in self.users:
            if group.group == name:
                return group
        raise ScenarioError("group", f"no user group named {name!r}", self.source)

    def max_users(self, group: UserGroup) -> int:
        """Users a group may ever have active: its initial count or any ``users`` event's."""
        counts = [group.count] + [int(event.args["count"]) for event in self.events
                                  if event.kind == "users" and event.args.get("group") == group.group]
        return max(counts)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy for ``report.json`` (the run can be repeated from it)."""
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "duration_s": self.duration_s, "seed": self.seed, "feedback_share": self.feedback_share,
            "nodes": [vars(node) for node in self.nodes],
            "links": {key: dict(value) for key, value in self.links.items()},
            "link_default": dict(self.link_default) if self.link_default else None,
            "users": [{**vars(group), "qoe": asdict(group.qoe), "deadline": vars(group.deadline),
                       "entry": list(group.entry)} for group in self.users],
            "events": [{"at_s": event.at_s, "kind": event.kind, "node": event.node, "args": dict(event.args)}
                       for event in self.events],
        }


# ---- parsing ------------------------------------------------------------------------------

_TOP_KEYS = {"name", "description", "duration_s", "seed", "feedback_share", "zoo", "cluster", "links", "users",
             "events"}
_NODE_KEYS = {"name", "device_profile", "variants", "threads", "queue_capacity", "max_batch", "workers",
              "cpu_backend"}
CPU_BACKEND_NAMES = ("auto", "cpu-eager", "onnxruntime")
_USER_KEYS = {"group", "count", "family", "rate_per_s", "think_ms", "qoe", "deadline", "entry", "min_accuracy"}
_EVENT_KEYS = {"at_s", "kind", "node", "args"}
_DEADLINE_KEYS = {"kind", "ms", "low_ms", "high_ms", "median_ms", "sigma", "min_ms", "max_ms"}


class _Reader:
    """Typed access to a TOML table that names the field in every error."""

    def __init__(self, table: Mapping[str, Any], path: str, source: str) -> None:
        if not isinstance(table, Mapping):
            raise ScenarioError(path or "<top>", f"expected a table, got {type(table).__name__}", source)
        self.table = table
        self.path = path
        self.source = source

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.name(key), message, self.source)

    def only(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.table) - allowed)
        if unknown:
            raise self.fail(unknown[0], f"unknown key; known keys: {', '.join(sorted(allowed))}")

    def number(self, key: str, default: float | None = None, *, minimum: float | None = None,
               positive: bool = False, required: bool = False) -> float | None:
        if key not in self.table:
            if required:
                raise self.fail(key, "is required")
            return default
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise self.fail(key, f"must be finite, got {value}")
        if positive and value <= 0:
            raise self.fail(key, f"must be > 0, got {value:g}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum:g}, got {value:g}")
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int | None = None,
                maximum: int | None = None, required: bool = False) -> int | None:
        if key not in self.table:
            if required:
                raise self.fail(key, "is required")
            return default
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(key, f"must be <= {maximum}, got {value}")
        return value

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        if key not in self.table:
            if required:
                raise self.fail(key, "is required")
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value.strip()

    def tables(self, key: str) -> list[_Reader]:
        value = self.table.get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, "must be an array of tables ([[...]])")
        return [_Reader(item, f"{self.name(key)}[{index}]", self.source) for index, item in enumerate(value)]


def _parse_node(reader: _Reader) -> NodeSpec:
    reader.only(_NODE_KEYS)
    name = reader.text("name", required=True)
    assert name is not None
    if any(character.isspace() for character in name) or "->" in name or "<->" in name:
        raise reader.fail("name", f"{name!r} must have no spaces and no arrows")
    cpu_backend = reader.text("cpu_backend", "auto") or "auto"
    if cpu_backend not in CPU_BACKEND_NAMES:
        raise reader.fail("cpu_backend", f"{cpu_backend!r} is not one of {', '.join(CPU_BACKEND_NAMES)}")
    return NodeSpec(
        name=name,
        device_profile=reader.text("device_profile", "native") or "native",
        variants=reader.text("variants", "digits-cnn") or "digits-cnn",
        threads=reader.integer("threads", 1, minimum=1, maximum=64) or 1,
        queue_capacity=reader.integer("queue_capacity", None, minimum=1),
        max_batch=reader.integer("max_batch", None, minimum=1),
        workers=reader.integer("workers", None, minimum=1, maximum=64),
        cpu_backend=cpu_backend,
    )


def _parse_deadline(reader: _Reader) -> DeadlineDistribution:
    reader.only(_DEADLINE_KEYS)
    kind = reader.text("kind", "fixed")
    if kind not in DEADLINE_KINDS:
        raise reader.fail("kind", f"{kind!r} is not one of {', '.join(DEADLINE_KINDS)}")
    min_ms = reader.number("min_ms", 1.0, positive=True)
    max_ms = reader.number("max_ms", MAX_DEADLINE_MS, positive=True)
    assert min_ms is not None and max_ms is not None
    if max_ms > MAX_DEADLINE_MS:
        raise reader.fail("max_ms", f"must be <= {MAX_DEADLINE_MS:g} (the node's limit)")
    if min_ms > max_ms:
        raise reader.fail("min_ms", f"{min_ms:g} is above max_ms {max_ms:g}")
    if kind == "fixed":
        ms = reader.number("ms", required=True, positive=True)
        assert ms is not None
        if ms > MAX_DEADLINE_MS:
            raise reader.fail("ms", f"must be <= {MAX_DEADLINE_MS:g}")
        return DeadlineDistribution(kind=kind, ms=ms, min_ms=min_ms, max_ms=max_ms)
    if kind == "uniform":
        low = reader.number("low_ms", required=True, positive=True)
        high = reader.number("high_ms", required=True, positive=True)
        assert low is not None and high is not None
        if high < low:
            raise reader.fail("high_ms", f"{high:g} is below low_ms {low:g}")
        if high > MAX_DEADLINE_MS:
            raise reader.fail("high_ms", f"must be <= {MAX_DEADLINE_MS:g}")
        return DeadlineDistribution(kind=kind, low_ms=low, high_ms=high, min_ms=min_ms, max_ms=max_ms)
    median = reader.number("median_ms", required=True, positive=True)
    sigma = reader.number("sigma", 0.5, minimum=0.0)
    assert median is not None and sigma is not None
    if sigma > 5:
        raise reader.fail("sigma", f"must be <= 5, got {sigma:g}")
    return DeadlineDistribution(kind=kind, median_ms=median, sigma=sigma, min_ms=min_ms, max_ms=max_ms)


def _parse_qoe(reader: _Reader) -> QoEWeights:
    reader.only({"accuracy", "latency", "energy"})
    defaults = QoEWeights()
    accuracy = reader.number("accuracy", defaults.accuracy, minimum=0.0) or 0.0
    latency = reader.number("latency", defaults.latency, minimum=0.0) or 0.0
    energy = reader.number("energy", defaults.energy, minimum=0.0) or 0.0
    if accuracy + latency + energy <= 0:  # checked here so the error names the scenario's key
        raise reader.fail("accuracy", "at least one QoE weight must be > 0")
    return QoEWeights(accuracy=accuracy, latency=latency, energy=energy)


def _parse_users(reader: _Reader, node_names: set[str]) -> UserGroup:
    reader.only(_USER_KEYS)
    group = reader.text("group", required=True)
    count = reader.integer("count", required=True, minimum=0, maximum=MAX_USERS)
    rate = reader.number("rate_per_s", None, positive=True)
    think = reader.number("think_ms", None, minimum=0.0)
    if (rate is None) == (think is None):
        raise reader.fail("rate_per_s", "give exactly one of rate_per_s (open loop) or think_ms (closed loop)")
    if rate is not None and rate > 1000:
        raise reader.fail("rate_per_s", f"{rate:g} requests/s per user is beyond what one machine can drive")
    qoe_table = reader.table.get("qoe", {})
    deadline_table = reader.table.get("deadline", {"kind": "fixed", "ms": 100.0})
    entry_value = reader.table.get("entry", [])
    if isinstance(entry_value, str):
        entry_value = [entry_value]
    if not isinstance(entry_value, list) or not all(isinstance(item, str) for item in entry_value):
        raise reader.fail("entry", "must be a node name or a list of node names")
    for name in entry_value:
        if name not in node_names:
            raise reader.fail("entry", f"no node named {name!r}; nodes: {', '.join(sorted(node_names))}")
    min_accuracy = reader.number("min_accuracy", None, minimum=0.0)
    if min_accuracy is not None and min_accuracy > 1.0:
        raise reader.fail("min_accuracy", f"is a share of answers right, in [0, 1], got {min_accuracy:g}")
    assert group is not None and count is not None
    return UserGroup(
        group=group, count=count, family=reader.text("family", "digits-cnn") or "digits-cnn",
        rate_per_s=rate, think_ms=think,
        qoe=_parse_qoe(_Reader(qoe_table, reader.name("qoe"), reader.source)),
        deadline=_parse_deadline(_Reader(deadline_table, reader.name("deadline"), reader.source)),
        entry=tuple(entry_value), min_accuracy=min_accuracy,
    )


def _parse_event(reader: _Reader, node_names: set[str], groups: Mapping[str, UserGroup],
                 duration_s: float) -> Event:
    reader.only(_EVENT_KEYS)
    at_s = reader.number("at_s", required=True, minimum=0.0)
    kind = reader.text("kind", required=True)
    assert at_s is not None and kind is not None
    if kind not in EVENT_KINDS:
        raise reader.fail("kind", f"{kind!r} is not one of {', '.join(EVENT_KINDS)}")
    if at_s > duration_s:
        raise reader.fail("at_s", f"{at_s:g} s is after the end of the run ({duration_s:g} s)")
    args = reader.table.get("args", {})
    if not isinstance(args, Mapping):
        raise reader.fail("args", "must be a table")
    args_reader = _Reader(args, reader.name("args"), reader.source)
    node = reader.text("node", None)
    if kind in ("kill", "restart", "heat"):
        if node is None:
            raise reader.fail("node", f"a {kind} event needs the node it acts on")
        if node not in node_names:
            raise reader.fail("node", f"no node named {node!r}; nodes: {', '.join(sorted(node_names))}")
    if kind == "heat":
        args_reader.only({"temperature_c"})
        temperature = args_reader.number("temperature_c", 85.0)
        assert temperature is not None
        if not -40 <= temperature <= 150:
            raise args_reader.fail("temperature_c", f"{temperature:g} °C is not a plausible die temperature")
        args = {"temperature_c": temperature}
    elif kind == "users":
        args_reader.only({"group", "count"})
        group = args_reader.text("group", required=True)
        count = args_reader.integer("count", required=True, minimum=0, maximum=MAX_USERS)
        if group not in groups:
            raise args_reader.fail("group", f"no user group {group!r}; groups: {', '.join(sorted(groups))}")
        args = {"group": group, "count": count}
    else:
        args_reader.only(set())
        args = {}
    return Event(at_s=at_s, kind=kind, node=node, args=args)


def _parse_links(value: Any, node_names: set[str], source: str) -> tuple[dict[str, dict], dict | None]:
    if not isinstance(value, Mapping):
        raise ScenarioError("links", "must be a table of link tables", source)
    links: dict[str, dict] = {}
    default = None
    for key, table in value.items():
        if not isinstance(table, Mapping):
            raise ScenarioError(f"links.{key}", "must be a table", source)
        if key == "default":
            default = dict(table)
            continue
        parts = key.split("<->") if "<->" in key else key.split("->")
        if len(parts) != 2 or not all(part.strip() for part in parts):
            raise ScenarioError(f"links.{key}", "the key must look like 'a->b' or 'a<->b'", source)
        for part in parts:
            if part.strip() not in node_names:
                raise ScenarioError(f"links.{key}", f"no node named {part.strip()!r}", source)
        links[key] = dict(table)
    return links, default


def check_links(scenario: Scenario, trace_roots: Sequence[Path] = TRACE_ROOTS) -> None:
    """Build the link matrix as the nodes will (every trace loaded), so a bad link fails now."""
    try:
        from p2pinfer.emulation.link import LinkMatrix
        from p2pinfer.errors import P2PError
    except ImportError:  # the emulation modules are not there yet: only the keys were checked
        return
    search = [*trace_roots, Path(scenario.source).parent] if scenario.source else list(trace_roots)
    try:
        LinkMatrix.from_dict(scenario.links, default=scenario.link_default, trace_roots=search, seed=scenario.seed)
    except P2PError as error:
        raise ScenarioError("links", error.message, scenario.source) from None


def _check_profiles_and_variants(scenario: Scenario) -> None:
    try:
        from p2pinfer.emulation.device_profile import profile_names
    except ImportError:
        pass
    else:
        known = profile_names()
        for index, node in enumerate(scenario.nodes):
            if node.device_profile not in known:
                raise ScenarioError(f"cluster.nodes[{index}].device_profile",
                                    f"unknown profile {node.device_profile!r}; known: {', '.join(known)}",
                                    scenario.source)
    from zoo.errors import ZooError
    from zoo.manifest import read_manifest

    try:
        manifest = read_manifest(scenario.zoo_dir)
    except (OSError, ZooError) as error:
        raise ScenarioError("zoo", f"{scenario.zoo!r} is not a readable zoo: {error}", scenario.source) from None
    families = {info.family for info in manifest.variants.values()}
    for index, node in enumerate(scenario.nodes):
        for item in node.variants.split(","):
            name = item.strip().split(":", 1)[0]
            if name != "all" and name not in families and name not in manifest.variants:
                raise ScenarioError(f"cluster.nodes[{index}].variants",
                                    f"{name!r} is neither 'all', a family ({', '.join(sorted(families))}) "
                                    f"nor a variant", scenario.source)
    for index, group in enumerate(scenario.users):
        if group.family not in families:
            raise ScenarioError(f"users[{index}].family", f"unknown family {group.family!r}; known: "
                                f"{', '.join(sorted(families))}", scenario.source)


def parse_scenario(document: Mapping[str, Any], *, source: str = "", default_name: str = "scenario",
                   check_environment: bool = True) -> Scenario:
    """Validate a parsed TOML document into a ``Scenario``.

    ``check_environment`` also checks device profiles, variants, families and traces against
    what is installed (off for pure syntax tests).
    """
    top = _Reader(document, "", source)
    top.only(_TOP_KEYS)
    duration = top.number("duration_s", required=True, positive=True)
    assert duration is not None
    if duration > 24 * 3600:
        raise top.fail("duration_s", "must be at most a day")
    cluster = _Reader(document.get("cluster", {}), "cluster", source)
    cluster.only({"nodes"})
    nodes = tuple(_parse_node(reader) for reader in cluster.tables("nodes"))
    if not nodes:
        raise ScenarioError("cluster.nodes", "a scenario needs at least one node", source)
    if len(nodes) > MAX_NODES:
        raise ScenarioError("cluster.nodes", f"at most {MAX_NODES} nodes on one machine", source)
    names = [node.name for node in nodes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ScenarioError("cluster.nodes", f"duplicate node name {duplicates[0]!r}", source)
    node_names = set(names)
    groups_list = [_parse_users(reader, node_names) for reader in top.tables("users")]
    if not groups_list:
        raise ScenarioError("users", "a scenario needs at least one [[users]] group", source)
    groups = {group.group: group for group in groups_list}
    if len(groups) != len(groups_list):
        raise ScenarioError("users", "user group names must be unique", source)
    events = tuple(sorted((_parse_event(reader, node_names, groups, duration) for reader in top.tables("events")),
                          key=lambda event: event.at_s))
    links, link_default = _parse_links(document.get("links", {}), node_names, source)
    feedback_share = top.number("feedback_share", 0.0, minimum=0.0)
    assert feedback_share is not None
    if feedback_share > 1:
        raise top.fail("feedback_share", f"is a share in [0, 1], got {feedback_share:g}")
    scenario = Scenario(
        name=top.text("name", default_name) or default_name,
        description=top.text("description", "") or "",
        duration_s=duration,
        seed=top.integer("seed", 0, minimum=0) or 0,
        nodes=nodes, users=tuple(groups_list), links=links, link_default=link_default, events=events,
        feedback_share=feedback_share, source=source, zoo=top.text("zoo", "") or "",
    )
    if not any(scenario.max_users(group) for group in scenario.users):
        raise ScenarioError("users", "no user is ever active: every group has count 0", source)
    if check_environment:
        _check_profiles_and_variants(scenario)
        check_links(scenario)
    return scenario


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    """A scenario file: a path as given, else ``benchmarks/scenarios/NAME.toml``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = SCENARIOS_DIR / f"{path.name.removesuffix('.toml')}.toml"
    if bundled.is_file():
        return bundled
    known = sorted(item.stem for item in SCENARIOS_DIR.glob("*.toml"))
    raise ScenarioError("scenario", f"no scenario file {str(name_or_path)!r}; bundled: {', '.join(known)}")


def load_scenario(name_or_path: str | Path, *, check_environment: bool = True) -> Scenario:
    path = resolve_scenario_path(name_or_path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError("toml", f"not valid TOML: {error}", str(path)) from None
    return parse_scenario(document, source=str(path), default_name=path.stem, check_environment=check_environment)


# ---- overrides from the command line ----------------------------------------------------------


def with_duration(scenario: Scenario, duration_s: float) -> Scenario:
    """The same scenario over ``duration_s``: event times scale with it, so a shortened run still
    sees every event at the same point of its course."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ScenarioError("duration", f"must be > 0 seconds, got {duration_s}")
    factor = duration_s / scenario.duration_s
    events = tuple(replace(event, at_s=round(event.at_s * factor, 6)) for event in scenario.events)
    return replace(scenario, duration_s=duration_s, events=events)


def with_nodes(scenario: Scenario, names: Sequence[str]) -> Scenario:
    """The scenario on a subset of its nodes (small test clusters): links, entries and events
    that name a dropped node are dropped with it; a group left with no entry spreads again."""
    keep = [node for node in scenario.nodes if node.name in set(names)]
    missing = sorted(set(names) - {node.name for node in keep})
    if missing:
        raise ScenarioError("nodes", f"no node named {missing[0]!r}", scenario.source)
    if not keep:
        raise ScenarioError("nodes", "keep at least one node", scenario.source)
    kept = {node.name for node in keep}

    def link_nodes(key: str) -> set[str]:
        return {part.strip() for part in (key.split("<->") if "<->" in key else key.split("->"))}

    links = {key: table for key, table in scenario.links.items() if link_nodes(key) <= kept}
    users = tuple(replace(group, entry=tuple(name for name in group.entry if name in kept)) for group in scenario.users)
    events = tuple(event for event in scenario.events if event.node is None or event.node in kept)
    return replace(scenario, nodes=tuple(keep), links=links, users=users, events=events)


def with_family(scenario: Scenario, family: str, zoo: str | None = None) -> Scenario:
    """The scenario on another model family: every node hosts ``family`` and every user asks
    for it (the tests run the bundled ``digits-resnet`` scenarios on the cheap ``digits-cnn``;
    ``p2pinfer bench SCENARIO --family text-orientation`` runs any of them on the real family).
    ``zoo``: where the family is ("" embedded, "pretrained", a directory); None keeps the
    scenario's zoo if it holds the family, else takes the pretrained zoo if that does. The
    result is checked as a loaded scenario is."""
    from zoo.manifest import PRETRAINED_ZOO_DIR, read_manifest

    if zoo is None:
        zoo = scenario.zoo
        if not read_manifest(scenario.zoo_dir).variants_of(family) and \
                read_manifest(PRETRAINED_ZOO_DIR).variants_of(family):
            zoo = "pretrained"
    nodes = tuple(replace(node, variants=family) for node in scenario.nodes)
    users = tuple(replace(group, family=family) for group in scenario.users)
    changed = replace(scenario, nodes=nodes, users=users, zoo=zoo)
    _check_profiles_and_variants(changed)
    return changed


def trace_files(trace: str | Path) -> list[Path]:
    """``--trace FILE|DIR``: one file, or every regular file of a folder in name order."""
    path = Path(trace)
    if path.is_dir():
        files = sorted(item for item in path.iterdir() if item.is_file() and not item.name.startswith("."))
        files = [item for item in files if item.suffix.lower() not in (".md", ".toml", ".json")]
        if not files:
            raise ScenarioError("trace", f"folder {path} holds no trace files")
        return files
    if path.is_file():
        return [path]
    for root in TRACE_ROOTS:
        candidate = root / path
        if candidate.is_dir() or candidate.is_file():
            return trace_files(candidate)
    raise ScenarioError("trace", f"no trace file or folder {str(trace)!r}")


def with_traces(scenario: Scenario, trace: str | Path | None = None, trace_scale: float | None = None) -> Scenario:
    """``--trace`` and ``--trace-scale``: every named link replays the given trace(s) (a folder's
    files are dealt to the links in turn), and/or every traced link gets the scale."""
    if trace is None and trace_scale is None:
        return scenario
    if trace_scale is not None and not (math.isfinite(trace_scale) and trace_scale > 0):
        raise ScenarioError("trace_scale", f"must be > 0, got {trace_scale}")
    files = trace_files(trace) if trace is not None else []
    links: dict[str, dict] = {}
    for index, (key, table) in enumerate(sorted(scenario.links.items())):
        updated = dict(table)
        if files:
            updated["trace"] = str(files[index % len(files)].resolve())
            updated.pop("bandwidth_mbps", None)
        if trace_scale is not None and "trace" in updated:
            updated["trace_scale"] = trace_scale
        links[key] = updated
    default = dict(scenario.link_default) if scenario.link_default is not None else None
    if files and (default is not None or not links):  # unnamed pairs replay a trace too
        default = dict(default or {})
        default["trace"] = str(files[len(links) % len(files)].resolve())
        default.pop("bandwidth_mbps", None)
    if default is not None and trace_scale is not None and "trace" in default:
        default["trace_scale"] = trace_scale
    updated_scenario = replace(scenario, links=links, link_default=default)
    check_links(updated_scenario)
    return updated_scenario
