"""The load generator: M virtual users sending held-out digits to a live cluster.

Why precomputed: policies are only comparable on the same workload, so every open-loop
arrival (time, user, input, deadline, whether feedback follows) is drawn once from the
scenario's seed, before any cluster starts, and replayed unchanged for every policy.
Closed-loop users cannot share arrival *times* (those depend on how fast the cluster
answers), but they draw the same sequence of (input, deadline, feedback, think time) items.

Every request gets exactly one ``RequestRecord``: a result, the node's typed error, or a
client-side outcome (``timeout``, ``connection_failed``) — never nothing. Every loop is
bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np

from benchmarks.scenario import DeadlineDistribution, HarnessError, Scenario
from selector.qoe import QoEWeights

MAX_ARRIVALS = 500_000
"""Refuse a schedule larger than this: it would not fit the run, let alone the report."""
MAX_IN_FLIGHT = 2048
"""Open loop keeps sending while answers are late, but not without bound: past this many
unanswered requests a new arrival is recorded as ``harness_overloaded`` instead of sent."""
CLOSED_LOOP_MAX_PER_USER = 100_000
DEFAULT_SEND_GRACE_S = 3.0
"""Beyond its deadline, how long one attempt on one node may take before the client gives up
on that node (and fails over): deadlines are enforced by the node, this only catches a hang."""

RecordCallback = Callable[["RequestRecord"], None]


class LoadError(HarnessError):
    """The workload cannot be generated as described."""


# ---- users and the arrival schedule ------------------------------------------------------------


@dataclass(frozen=True)
class VirtualUser:
    user: str
    group: str
    index_in_group: int
    ordinal: int  # position among all users: seeds this user's random stream
    family: str
    qoe: QoEWeights
    deadline: DeadlineDistribution
    entry: str  # node name this user sends to first
    failover: tuple[str, ...]  # every node name, entry first
    rate_per_s: float | None
    think_ms: float | None
    min_accuracy: float | None = None

    @property
    def open_loop(self) -> bool:
        return self.rate_per_s is not None


@dataclass(frozen=True)
class Arrival:
    """One request a user will send. ``at_s`` is seconds after the load starts (NaN for a
    closed-loop item, which is sent when the previous answer and the think time are over)."""

    key: str
    user: str
    sequence: int
    at_s: float
    image_index: int
    deadline_ms: float
    feedback: bool
    think_s: float = 0.0


def make_users(scenario: Scenario) -> list[VirtualUser]:
    """Every user a scenario may ever activate; entries spread round robin over nodes."""
    node_names = [node.name for node in scenario.nodes]
    users: list[VirtualUser] = []
    for group in scenario.users:
        entries = list(group.entry) or node_names
        for index in range(scenario.max_users(group)):
            entry = entries[(len(users) if not group.entry else index) % len(entries)]
            failover = (entry, *[name for name in node_names if name != entry])
            users.append(VirtualUser(
                user=f"{group.group}-{index}", group=group.group, index_in_group=index, ordinal=len(users),
                family=group.family, qoe=group.qoe, deadline=group.deadline, entry=entry, failover=failover,
                rate_per_s=group.rate_per_s, think_ms=group.think_ms, min_accuracy=group.min_accuracy))
    return users


class Activity:
    """How many users of each group are active at a time: the initial counts, changed by the
    scenario's ``users`` events (a load swing). User ``k`` of a group is active while the
    group's count exceeds ``k``."""

    def __init__(self, scenario: Scenario) -> None:
        self.changes: dict[str, tuple[list[float], list[int]]] = {}
        for group in scenario.users:
            times, counts = [0.0], [group.count]
            for event in scenario.events:
                if event.kind == "users" and event.args.get("group") == group.group:
                    times.append(event.at_s)
                    counts.append(int(event.args["count"]))
            self.changes[group.group] = (times, counts)

    def count(self, group: str, at_s: float) -> int:
        times, counts = self.changes[group]
        return counts[bisect.bisect_right(times, at_s) - 1]

    def active(self, user: VirtualUser, at_s: float) -> bool:
        return user.index_in_group < self.count(user.group, at_s)

    def next_change(self, group: str, after_s: float) -> float:
        times, _ = self.changes[group]
        index = bisect.bisect_right(times, after_s)
        return times[index] if index < len(times) else math.inf


def sample_deadline(distribution: DeadlineDistribution, rng: np.random.Generator) -> float:
    """One deadline in ms (always one draw from ``rng``, whatever the kind, so streams stay aligned)."""
    uniform = float(rng.random())
    if distribution.kind == "fixed":
        value = distribution.ms
    elif distribution.kind == "uniform":
        value = distribution.low_ms + uniform * (distribution.high_ms - distribution.low_ms)
    else:  # lognormal around the median, by inverse transform of the same uniform draw
        from statistics import NormalDist

        z = NormalDist().inv_cdf(min(max(uniform, 1e-12), 1 - 1e-12))
        value = distribution.median_ms * math.exp(distribution.sigma * z)
    return round(min(max(value, distribution.min_ms), distribution.max_ms), 3)


def _user_rng(seed: int, user: VirtualUser) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0x5EED, user.ordinal]))


def _item(user: VirtualUser, rng: np.random.Generator, sequence: int, at_s: float, image_count: int,
          feedback_share: float) -> Arrival:
    image_index = int(rng.integers(0, image_count))
    deadline_ms = sample_deadline(user.deadline, rng)
    feedback = bool(rng.random() < feedback_share)
    think_s = float(rng.exponential(user.think_ms / 1000.0)) if user.think_ms else 0.0
    return Arrival(key=f"{user.user}#{sequence}", user=user.user, sequence=sequence, at_s=at_s,
                   image_index=image_index, deadline_ms=deadline_ms, feedback=feedback, think_s=think_s)


def open_loop_arrivals(scenario: Scenario, users: Sequence[VirtualUser], image_count: int) -> list[Arrival]:
    """Poisson arrivals of every open-loop user over the run, sorted by time.

    Each user's stream is drawn in full from its own seeded generator, and arrivals falling in
    a period when the user is inactive are then dropped, so a load swing never shifts another
    user's stream (nor this user's later arrivals).
    """
    activity = Activity(scenario)
    arrivals: list[Arrival] = []
    for user in users:
        if not user.open_loop:
            continue
        assert user.rate_per_s is not None
        rng = _user_rng(scenario.seed, user)
        limit = int(user.rate_per_s * scenario.duration_s * 4 + 100)
        at_s = 0.0
        for sequence in range(limit):
            at_s += float(rng.exponential(1.0 / user.rate_per_s))
            if at_s >= scenario.duration_s:
                break
            arrival = _item(user, rng, sequence, at_s, image_count, scenario.feedback_share)
            if activity.active(user, at_s):
                arrivals.append(arrival)
                if len(arrivals) > MAX_ARRIVALS:
                    raise LoadError(f"more than {MAX_ARRIVALS} arrivals: lower the rates or the duration")
    arrivals.sort(key=lambda arrival: (arrival.at_s, arrival.user))
    return arrivals


def closed_loop_items(scenario: Scenario, user: VirtualUser, image_count: int) -> Iterator[Arrival]:
    """The items a closed-loop user sends, in order (at most ``CLOSED_LOOP_MAX_PER_USER``)."""
    rng = _user_rng(scenario.seed, user)
    for sequence in range(CLOSED_LOOP_MAX_PER_USER):
        yield _item(user, rng, sequence, math.nan, image_count, scenario.feedback_share)


@dataclass
class Schedule:
    """The workload of one scenario, identical for every policy."""

    scenario: Scenario
    users: list[VirtualUser]
    arrivals: list[Arrival]  # open loop only
    image_count: int

    @property
    def closed_loop_users(self) -> list[VirtualUser]:
        return [user for user in self.users if not user.open_loop]

    def user(self, name: str) -> VirtualUser:
        for user in self.users:
            if user.user == name:
                return user
        raise KeyError(name)


def build_schedule(scenario: Scenario, image_count: int) -> Schedule:
    if image_count <= 0:
        raise LoadError("the held-out split is empty")
    users = make_users(scenario)
    return Schedule(scenario, users, open_loop_arrivals(scenario, users, image_count), image_count)


# ---- held-out inputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """One family's held-out inputs and their true labels: tensors (one sample each) for a family
    that takes tensors, or JPEGs for one whose manifest has preprocessing (a camera sends the
    frame it took: the node decodes and preprocesses it, and the planner may forward it as is)."""

    labels: np.ndarray
    images: np.ndarray | None = None
    jpegs: tuple[bytes, ...] = ()

    def sample(self, index: int) -> np.ndarray:
        assert self.images is not None, "an image family's inputs are JPEGs"
        return self.images[index:index + 1]

    async def send(self, client: Any, index: int, **options: Any) -> Any:
        """Request ``index``'s inference through ``client`` (an ``AsyncClient``)."""
        if self.jpegs:
            return await client.infer_image(self.jpegs[index], **options)
        return await client.infer(self.sample(index), **options)


def held_out_inputs(families: Sequence[str], zoo_dir: Path | None = None) -> dict[str, HeldOut]:
    """Each family's held-out split from ``zoo_dir`` (None: the embedded zoo)."""
    from zoo.dataset import held_out_of
    from zoo.manifest import read_manifest

    manifest = read_manifest(zoo_dir)
    inputs = {}
    for family in sorted(set(families)):
        variants = manifest.variants_of(family)
        if not variants:
            raise LoadError(f"no variant of family {family!r} in the zoo manifest")
        if variants[0].preprocessing:
            from zoo import orientation_data

            jpegs, labels = orientation_data.held_out_jpegs()
            inputs[family] = HeldOut(labels.numpy(), jpegs=tuple(jpegs))
            continue
        images, labels = held_out_of(variants[0])
        inputs[family] = HeldOut(labels.numpy(), images=np.ascontiguousarray(images.numpy(), dtype=np.float32))
    return inputs


# ---- what one request did ---------------------------------------------------------------------------


class RequestRecord(msgspec.Struct, kw_only=True):
    """One line of ``requests.jsonl``: everything the report, the oracle and the plots need."""

    key: str  # "user#sequence": the same request across policies
    policy: str
    user: str
    group: str
    family: str
    sequence: int
    scheduled_s: float | None  # open loop: planned send time; closed loop: None
    sent_s: float  # seconds after the load started
    done_s: float
    outcome: str  # "ok" or an error code
    error: str = ""
    latency_ms: float | None = None  # measured by the entry node (the request's own clock)
    predicted_ms: float | None = None  # the entry's planner, for the plan it chose
    client_latency_ms: float | None = None  # measured here, send to answer
    deadline_ms: float
    deadline_met: bool = False
    image_index: int
    true_label: int
    label: int | None = None
    correct: bool | None = None
    variant: str = ""
    exit: int | None = None
    arm: str = ""
    answered_policy: str = ""
    plan: list[list] = msgspec.field(default_factory=list)  # [node, unit, first_block, last_block]
    timings: list[dict] = msgspec.field(default_factory=list)
    entry_node: str = ""
    assigned_entry: str = ""
    degraded: bool = False
    replans: int = 0
    request_id: str = ""
    qoe_weights: dict[str, float] = msgspec.field(default_factory=dict)
    min_accuracy: float | None = None
    feedback: str | None = None  # None: not asked; "ok" or an error code
    qoe: float | None = None
    energy: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def _client_outcome(error: BaseException) -> tuple[str, str]:
    from p2pinfer.errors import P2PError

    if isinstance(error, P2PError):
        return error.code, error.message
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return "timeout", "no answer within the client's bound"
    if isinstance(error, aiohttp.ClientError):
        return "connection_failed", f"{type(error).__name__}: {error}"
    return "harness_error", f"{type(error).__name__}: {error}"


@dataclass
class LoadResult:
    records: list[RequestRecord]
    started_at: float  # monotonic time the load started
    ended_s: float  # seconds after start when the last answer came back
    skipped_closed_loop: int = 0


@dataclass
class LoadGenerator:
    """Runs one schedule against one cluster (``urls``: node name -> URL).

    ``on_record`` sees each record as it completes (progress bars, live tables).
    ``request_timeout_s`` bounds one attempt on one node; by default the largest deadline of
    the scenario plus ``DEFAULT_SEND_GRACE_S``.
    """

    schedule: Schedule
    urls: Mapping[str, str]
    policy: str
    inputs: Mapping[str, HeldOut]
    on_record: RecordCallback | None = None
    request_timeout_s: float | None = None
    records: list[RequestRecord] = field(default_factory=list)
    _in_flight: set[asyncio.Task] = field(default_factory=set)

    def _attempt_timeout_s(self) -> float:
        if self.request_timeout_s is not None:
            return self.request_timeout_s
        largest = max(user.deadline.upper_bound_ms for user in self.schedule.users)
        return largest / 1000.0 + DEFAULT_SEND_GRACE_S

    async def run(self, started: float | None = None) -> LoadResult:
        """Send the schedule; ``started`` is the monotonic time arrivals count from (default: now),
        shared with the event runner and the node sampler so all three use one clock."""
        from p2pinfer.client import AsyncClient

        scenario = self.schedule.scenario
        attempt_s = self._attempt_timeout_s()
        connector = aiohttp.TCPConnector(limit=512, limit_per_host=256)
        session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=attempt_s))

        def client_for(user: VirtualUser) -> AsyncClient:
            # One client per request: a user always tries its own entry node first (a node that
            # comes back after a failure gets its users back), then fails over in order.
            return AsyncClient([self.urls[name] for name in user.failover], timeout_s=attempt_s, session=session,
                               connect_timeout_s=1.0)
        started = time.monotonic() if started is None else started
        bound_s = attempt_s * len(scenario.nodes) + 2.0
        try:
            lead_s = started - time.monotonic()
            if lead_s > 0:
                await asyncio.sleep(lead_s)
            closed = [self._closed_loop(user, client_for, started, bound_s)
                      for user in self.schedule.closed_loop_users]
            await asyncio.gather(self._open_loop(client_for, started, bound_s), *closed)
            # Every request task bounds itself; this bound is a second line, never reached normally.
            if self._in_flight:
                await asyncio.wait(set(self._in_flight), timeout=bound_s + 5.0)
            for task in list(self._in_flight):
                task.cancel()
        finally:
            await session.close()
        ended = time.monotonic() - started
        return LoadResult(sorted(self.records, key=lambda record: (record.sent_s, record.key)), started, ended)

    async def _open_loop(self, client_for: Callable[[VirtualUser], Any], started: float, bound_s: float) -> None:
        users = {user.user: user for user in self.schedule.users}
        for arrival in self.schedule.arrivals:
            delay = started + arrival.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            user = users[arrival.user]
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                now = time.monotonic() - started
                self._finish(self._record(user, arrival, now, scheduled=True, outcome="harness_overloaded",
                                          error=f"more than {MAX_IN_FLIGHT} requests unanswered"), now)
                continue
            task = asyncio.create_task(self._send(user, arrival, client_for(user), started, bound_s, True))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _closed_loop(self, user: VirtualUser, client_for: Callable[[VirtualUser], Any], started: float,
                           bound_s: float) -> None:
        scenario = self.schedule.scenario
        activity = Activity(scenario)
        items = closed_loop_items(scenario, user, self.schedule.image_count)
        for arrival in items:
            now = time.monotonic() - started
            if now >= scenario.duration_s:
                return
            if not activity.active(user, now):
                wake = min(activity.next_change(user.group, now), scenario.duration_s)
                await asyncio.sleep(max(wake - now, 0.0) + 0.001)
                continue  # this item is skipped while inactive: the stream stays aligned by count
            await self._send(user, arrival, client_for(user), started, bound_s, False)
            if arrival.think_s > 0:
                await asyncio.sleep(min(arrival.think_s, max(scenario.duration_s - (time.monotonic() - started), 0)))

    def _record(self, user: VirtualUser, arrival: Arrival, sent_s: float, *, scheduled: bool, outcome: str,
                error: str = "") -> RequestRecord:
        held_out = self.inputs[user.family]
        return RequestRecord(
            key=arrival.key, policy=self.policy, user=user.user, group=user.group, family=user.family,
            sequence=arrival.sequence, scheduled_s=arrival.at_s if scheduled else None, sent_s=round(sent_s, 6),
            done_s=round(sent_s, 6), outcome=outcome, error=error, deadline_ms=arrival.deadline_ms,
            image_index=arrival.image_index, true_label=int(held_out.labels[arrival.image_index]),
            assigned_entry=user.entry, qoe_weights=asdict(user.qoe), min_accuracy=user.min_accuracy)

    def _finish(self, record: RequestRecord, done_s: float) -> None:
        record.done_s = round(done_s, 6)
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    async def _send(self, user: VirtualUser, arrival: Arrival, client, started: float, bound_s: float,
                    scheduled: bool) -> None:
        sent = time.monotonic()
        record = self._record(user, arrival, sent - started, scheduled=scheduled, outcome="ok")
        try:
            result = await asyncio.wait_for(
                self.inputs[user.family].send(client, arrival.image_index, deadline_ms=arrival.deadline_ms,
                                              user=user.user, qoe=asdict(user.qoe), family=user.family,
                                              min_accuracy=user.min_accuracy),
                timeout=bound_s)
        except asyncio.CancelledError:
            record.outcome, record.error = "timeout", "cancelled at the end of the run"
            self._finish(record, time.monotonic() - started)
            raise
        except Exception as error:  # noqa: BLE001 - every failure becomes an explicit outcome
            record.outcome, record.error = _client_outcome(error)
            record.client_latency_ms = round((time.monotonic() - sent) * 1000, 3)
            self._finish(record, time.monotonic() - started)
            return
        record.client_latency_ms = round((time.monotonic() - sent) * 1000, 3)
        _fill_result(record, result)
        done = time.monotonic() - started
        if arrival.feedback:
            try:
                await asyncio.wait_for(client.feedback(result.request_id, label=record.true_label), timeout=5.0)
                record.feedback = "ok"
            except Exception as error:  # noqa: BLE001
                record.feedback = _client_outcome(error)[0]
        self._finish(record, done)


def _fill_result(record: RequestRecord, result) -> None:
    record.latency_ms = float(result.latency_ms)
    record.predicted_ms = None if result.predicted_ms is None else float(result.predicted_ms)
    record.deadline_met = bool(result.deadline_met)
    record.label = int(result.label)
    record.correct = record.label == record.true_label
    record.variant = result.variant
    record.exit = int(result.exit)
    record.arm = result.arm or f"{result.variant}@{result.exit}"
    record.answered_policy = result.policy
    record.plan = [[segment.node, segment.unit, segment.first_block, segment.last_block] for segment in result.plan]
    record.timings = [msgspec.structs.asdict(timing) for timing in result.timings]
    record.entry_node = result.entry_node
    record.degraded = bool(result.degraded)
    record.replans = int(result.replans)
    record.request_id = result.request_id

