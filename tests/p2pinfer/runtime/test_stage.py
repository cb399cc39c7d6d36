"""The stage protocol's guarantees: a duplicated stage runs once, bad signatures change
nothing, a missed budget degrades or answers a typed error, a failed hop is re-planned and
every request gets exactly one answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from p2pinfer.errors import (
    BadRequest,
    DeadlineExceeded,
    Overloaded,
    P2PError,
    PeerUnavailable,
    RefusedBeforeStart,
    Unauthorized,
    UnknownVariant,
)
from p2pinfer.planning.peer_directory import PeerView, find_peer
from p2pinfer.protocol.error_body import error_response
from p2pinfer.protocol.wire import CONTENT_TYPE, encode_frame_bytes
from p2pinfer.runtime.stage import STAGE_PATH, StageHeader, StageHooks, StageSettings
from p2pinfer.runtime.transport import PeerTransport, PeerUnreachable
from p2pinfer.testing import ServiceNodeSpec, free_port, host_profile, segments_of, start_cluster
from p2pinfer.types import NodeId
from tests.p2pinfer.collaboration_support import CNN, reference_logits, resnet_name, sample

SECRET = b"stage-test-secret"


def stage_header(variant, segments, *, request_id="r", budget_ms=10_000.0, origin="a", **fields) -> StageHeader:
    return StageHeader(request_id=request_id, family=variant.family, variant=variant.name,
                       exit_block=segments[-1].last_block, segments=segments, budget_ms=budget_ms, origin=origin,
                       hop=1, **fields)


async def test_a_duplicated_stage_runs_once(manifest):
    variant = manifest.variant(resnet_name(manifest))
    cluster = await start_cluster([ServiceNodeSpec("a", {variant.name: (0, 3)}),
                                   ServiceNodeSpec("b", {variant.name: (0, 3)})],
                                  manifest=manifest, secret=SECRET)
    try:
        sender, receiver = cluster["a"], cluster["b"]
        view = sender.directory.peer(NodeId("b"))
        header = stage_header(variant, segments_of(("b", 1, 3)), request_id="twice")
        activation = reference_activation(variant, 1)
        # Two different signed messages (own nonces) for the same (request, segment), at once.
        first, second = await asyncio.gather(
            sender.transport.post_stage(view, header, {"activation": activation}),
            sender.transport.post_stage(view, header, {"activation": activation}))
        again = await sender.transport.post_stage(view, header, {"activation": activation})  # after it finished
    finally:
        await cluster.close()
    assert receiver.jobs == [("twice", 1, 3)]
    assert receiver.service.cache.hits == 2
    assert first.header.timings == second.header.timings == again.header.timings
    assert (first.tensors["logits"] == second.tensors["logits"]).all()


def reference_activation(variant, boundary: int):
    from zoo.model_slice import load_slice

    model = load_slice(variant, 0, boundary - 1)
    return model.run(model.prepare(sample(variant)), 0, boundary - 1)


async def test_bad_or_missing_signature_gets_401_and_runs_nothing(manifest):
    variant = manifest.variant(CNN)
    cluster = await start_cluster([ServiceNodeSpec("a", {variant.name: (0, 2)}),
                                   ServiceNodeSpec("b", {variant.name: (0, 2)})],
                                  manifest=manifest, secret=SECRET)
    try:
        receiver = cluster["b"]
        view = cluster["a"].directory.peer(NodeId("b"))
        header = stage_header(variant, segments_of(("b", 0, 2)))
        forger = PeerTransport("a", b"not-the-cluster-secret")
        with pytest.raises(Unauthorized):
            await forger.post_stage(view, header, {"activation": sample(variant)})
        await forger.close()
        body = encode_frame_bytes(header, {"activation": sample(variant)})
        async with aiohttp.ClientSession() as session, session.post(
                receiver.url + STAGE_PATH, data=body, headers={"Content-Type": CONTENT_TYPE}) as response:
            assert response.status == 401
            assert (await response.json())["code"] == "unauthorized"
        # The same transport with the right secret is served: the refusals changed nothing.
        good = await cluster["a"].transport.post_stage(view, header, {"activation": sample(variant)})
    finally:
        await cluster.close()
    assert good.header.exit_block == 2
    assert receiver.jobs == [("r", 0, 2)]


async def test_route_verifies_by_itself_without_the_middleware(manifest):
    from p2pinfer.testing import ServiceNode

    variant = manifest.variant(CNN)
    node = ServiceNode(ServiceNodeSpec("b", {variant.name: (0, 2)}), manifest, secret=SECRET, verify_in_route=True)
    await node.start()
    try:
        view = node.view()
        header = stage_header(variant, segments_of(("b", 0, 2)))
        forger = PeerTransport("a", b"wrong")
        with pytest.raises(Unauthorized):
            await forger.post_stage(view, header, {"activation": sample(variant)})
        await forger.close()
        transport = PeerTransport("a", SECRET)
        reply = await transport.post_stage(view, header, {"activation": sample(variant)})
        await transport.close()
    finally:
        await node.stop()
    assert reply.header.exit_block == 2 and node.jobs == [("r", 0, 2)]


async def test_typed_errors_come_back_typed(manifest):
    variant = manifest.variant(CNN)
    cluster = await start_cluster([ServiceNodeSpec("a", {variant.name: (0, 2)}),
                                   ServiceNodeSpec("b", {variant.name: (0, 0)})],
                                  manifest=manifest)
    try:
        transport, view = cluster["a"].transport, cluster["a"].directory.peer(NodeId("b"))
        with pytest.raises(UnknownVariant, match="does not host"):
            await transport.post_stage(view, stage_header(variant, segments_of(("b", 0, 2))),
                                       {"activation": sample(variant)})
        with pytest.raises(BadRequest, match="is for node"):
            await transport.post_stage(view, stage_header(variant, segments_of(("c", 0, 2)), request_id="r2"),
                                       {"activation": sample(variant)})
        with pytest.raises(BadRequest, match="shape"):
            await transport.post_stage(view, stage_header(variant, segments_of(("b", 0, 0)), request_id="r3"),
                                       {"activation": sample(variant)[:, :, :4]})
        with pytest.raises(DeadlineExceeded):
            await transport.post_stage(view, stage_header(variant, segments_of(("b", 0, 0)), budget_ms=-1.0,
                                                          request_id="r4"),
                                       {"activation": sample(variant)})
        async with aiohttp.ClientSession() as session, session.post(
                view.url + STAGE_PATH, data=b"\x00\x00\x00\x05garbage", headers={"Content-Type": CONTENT_TYPE}
        ) as response:
            assert response.status == 400 and (await response.json())["code"] in {"bad_header", "truncated_body"}
        dead = type(view)(node_id=NodeId("gone"), url="http://127.0.0.1:9")
        with pytest.raises(PeerUnreachable):
            await transport.post_stage(dead, stage_header(variant, segments_of(("gone", 0, 2))),
                                       {"activation": sample(variant)}, timeout_s=5.0)
    finally:
        await cluster.close()
    assert cluster["b"].jobs == []


async def test_a_hop_that_cannot_make_the_budget_degrades_to_its_exit(manifest):
    variant = manifest.variant(resnet_name(manifest))
    degraded: list[tuple[str, int]] = []
    # b is so hot that blocks 2-3 would need seconds: ten times the 600 ms budget at least.
    heat = 10 * 600.0 / min(host_profile(variant)[2:4])
    # a hosts only blocks 0-1: when b refuses blocks 2-3, no other node can run them
    specs = [ServiceNodeSpec("a", {variant.name: (0, 1)}), ServiceNodeSpec("b", {variant.name: (0, 3)}, heat=heat)]
    cluster = await start_cluster(specs, manifest=manifest,
                                  hooks={"a": StageHooks(on_degrade=lambda rid, block: degraded.append((rid, block)))})
    try:
        tensor = sample(variant)
        outcome = await cluster["a"].service.execute(
            request_id="tight", family=variant.family, variant=variant.name, exit_block=3,
            segments=segments_of(("a", 0, 1), ("b", 2, 3)), tensor=tensor, budget_ms=600.0)
        with pytest.raises(RefusedBeforeStart, match="b: request strict"):
            await cluster["a"].service.execute(
                request_id="strict", family=variant.family, variant=variant.name, exit_block=3,
                segments=segments_of(("a", 0, 1), ("b", 2, 3)), tensor=tensor, budget_ms=600.0, allow_degrade=False)
    finally:
        await cluster.close()
    # a answers with its own exit after block 1 rather than miss the budget.
    assert outcome.degraded and outcome.exit_block == 1
    assert outcome.executed == segments_of(("a", 0, 1))
    assert degraded == [("tight", 1)]
    expected = reference_logits(variant, tensor, exit_block=1)
    assert (outcome.logits - expected).abs().max() <= 1e-5


async def test_a_hop_refused_before_it_started_is_replanned_where_it_fits(manifest):
    """b is too hot to start blocks 2-3 within the budget and refuses them before running any
    (``RefusedBeforeStart``); a, which hosts them too, runs them instead: the request is
    answered in time, with one re-plan, the same logits as one full forward."""
    variant = manifest.variant(resnet_name(manifest))
    replans: list[tuple[str, str, str]] = []
    heat = 10 * 600.0 / min(host_profile(variant)[2:4])
    specs = [ServiceNodeSpec("a", {variant.name: (0, 3)}), ServiceNodeSpec("b", {variant.name: (0, 3)}, heat=heat)]
    hooks = StageHooks(on_replan=lambda rid, node, error: replans.append((rid, node, type(error).__name__)))
    cluster = await start_cluster(specs, manifest=manifest, hooks={"a": hooks})
    try:
        tensor = sample(variant)
        outcome = await cluster["a"].service.execute(
            request_id="strict", family=variant.family, variant=variant.name, exit_block=3,
            segments=segments_of(("a", 0, 1), ("b", 2, 3)), tensor=tensor, budget_ms=600.0, allow_degrade=False)
    finally:
        await cluster.close()
    assert replans == [("strict", "b", "RefusedBeforeStart")]
    assert outcome.replans == 1 and not outcome.degraded and outcome.exit_block == 3
    assert {segment.node for segment in outcome.executed} == {"a"}
    assert (outcome.logits - reference_logits(variant, tensor, exit_block=3)).abs().max() <= 1e-5


async def test_a_split_plan_whose_first_segment_the_entry_refuses_is_rerouted_once(manifest):
    """a is too hot to start its own first segment in the budget; the entry asks ``reroute``
    (the controller's re-route on peers) once, and b runs the whole arm: answered in time, one
    re-plan, the logits of one full forward. Without ``reroute`` the refusal stands."""
    variant = manifest.variant(resnet_name(manifest))
    heat = 10 * 600.0 / min(host_profile(variant)[0:2])
    specs = [ServiceNodeSpec("a", {variant.name: (0, 3)}, heat=heat), ServiceNodeSpec("b", {variant.name: (0, 3)})]
    cluster = await start_cluster(specs, manifest=manifest)
    asked: list[str] = []

    def reroute() -> list:
        asked.append("asked")
        return segments_of(("b", 0, 3))

    plan = segments_of(("a", 0, 1), ("b", 2, 3))
    try:
        tensor = sample(variant)
        outcome = await cluster["a"].service.execute(
            request_id="hot-entry", family=variant.family, variant=variant.name, exit_block=3, segments=plan,
            tensor=tensor, budget_ms=600.0, allow_degrade=False, reroute=reroute)
        with pytest.raises(RefusedBeforeStart):
            await cluster["a"].service.execute(
                request_id="no-reroute", family=variant.family, variant=variant.name, exit_block=3, segments=plan,
                tensor=tensor, budget_ms=600.0, allow_degrade=False)
    finally:
        await cluster.close()
    assert asked == ["asked"]
    assert outcome.replans == 1 and not outcome.degraded and outcome.exit_block == 3
    assert outcome.executed == segments_of(("b", 0, 3))
    assert (outcome.logits - reference_logits(variant, tensor, exit_block=3)).abs().max() <= 1e-5


async def test_entry_may_forward_its_first_segment(manifest):
    variant = manifest.variant(CNN)
    specs = [ServiceNodeSpec("a", {}), ServiceNodeSpec("b", {variant.name: (0, 1)}),
             ServiceNodeSpec("c", {variant.name: (2, 2)})]
    cluster = await start_cluster(specs, manifest=manifest)
    try:
        tensor = sample(variant)
        outcome = await cluster["a"].service.execute(
            request_id="remote", family=variant.family, variant=variant.name, exit_block=2,
            segments=segments_of(("b", 0, 1), ("c", 2, 2)), tensor=tensor, budget_ms=5_000.0)
    finally:
        await cluster.close()
    assert [t.node for t in outcome.timings] == ["b", "c"] and outcome.timings[0].transfer_ms > 0
    assert (outcome.logits - reference_logits(variant, tensor)).abs().max() <= 1e-5


async def test_a_crashed_middle_node_is_replanned_and_every_request_answered(manifest):
    variant = manifest.variant(resnet_name(manifest))
    replans: list[tuple[str, str]] = []
    specs = [ServiceNodeSpec(node, {variant.name: (0, 3)}) for node in ("a", "b", "c")]
    hooks = StageHooks(on_replan=lambda request_id, node, error: replans.append((request_id, node)))
    cluster = await start_cluster(specs, manifest=manifest, hooks={"a": hooks})
    answers: dict[str, object] = {}
    plan = segments_of(("a", 0, 0), ("b", 1, 2), ("c", 3, 3))
    crashed = asyncio.Event()

    async def request(index: int) -> None:
        request_id = f"stream-{index}"
        if index == 10:
            await cluster["b"].crash()
            crashed.set()
        try:
            outcome = await cluster["a"].service.execute(
                request_id=request_id, family=variant.family, variant=variant.name, exit_block=3, segments=plan,
                tensor=sample(variant, index), budget_ms=10_000.0, allow_degrade=False)
            answers.setdefault(request_id, outcome)
        except P2PError as error:
            answers.setdefault(request_id, error)

    try:
        for start in range(0, 30, 3):  # three requests in flight at a time
            await asyncio.gather(*(request(index) for index in range(start, start + 3)))
    finally:
        await cluster.close()
    assert crashed.is_set()
    assert sorted(answers) == sorted(f"stream-{index}" for index in range(30))
    results = [answer for answer in answers.values() if not isinstance(answer, P2PError)]
    assert len(results) == 30, [answer for answer in answers.values() if isinstance(answer, P2PError)]
    rerouted = [outcome for outcome in results if outcome.replans]
    assert len(rerouted) >= 19 and all("b" not in [t.node for t in outcome.timings] for outcome in rerouted)
    assert {node for _, node in replans} == {"b"} and len(replans) == sum(outcome.replans for outcome in results)
    assert NodeId("b") in cluster["a"].directory.failed


async def test_no_replica_left_is_an_explicit_error(manifest):
    variant = manifest.variant(CNN)
    specs = [ServiceNodeSpec("a", {variant.name: (0, 0)}), ServiceNodeSpec("b", {variant.name: (1, 2)})]
    cluster = await start_cluster(specs, manifest=manifest)
    try:
        await cluster["b"].crash()
        with pytest.raises(P2PError) as caught:
            await cluster["a"].service.execute(
                request_id="alone", family=variant.family, variant=variant.name, exit_block=2,
                segments=segments_of(("a", 0, 0), ("b", 1, 2)), tensor=sample(variant), budget_ms=5_000.0,
                allow_degrade=False)
    finally:
        await cluster.close()
    assert caught.value.code in {"no_feasible_plan", PeerUnavailable.code}
    assert "b" in caught.value.message


async def fake_peer(stage: Callable[[web.Request], Awaitable[web.Response]]) -> tuple[web.AppRunner, str]:
    """A peer on a free loopback port whose ``/v1/stage`` is ``stage``; (runner, its URL)."""
    app = web.Application()
    app.router.add_post(STAGE_PATH, stage)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # noqa: SLF001


def fake_peer_view(variant, url: str, first_block: int) -> PeerView:
    """How the entry sees a fake peer "b": blocks [first_block, 2] of ``variant``, 0.1 ms each."""
    return PeerView(NodeId("b"), url, hosted={variant.name: (first_block, 2)},
                    block_ms={variant.name: [0.1, 0.1, 0.1]})


async def silent_peer(release: asyncio.Event) -> tuple[web.AppRunner, str]:
    """A peer that accepts stages and never answers (a hung process) until ``release``."""

    async def stage(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()
        return web.Response(status=503)

    return await fake_peer(stage)


async def test_a_hung_peer_times_out_and_is_replanned_or_the_budget_says_so(manifest):
    variant = manifest.variant(CNN)
    release = asyncio.Event()
    runner, url = await silent_peer(release)
    specs = [ServiceNodeSpec("a", {variant.name: (0, 2)}), ServiceNodeSpec("c", {variant.name: (0, 2)})]
    cluster = await start_cluster(specs, manifest=manifest, settings=StageSettings(timeout_margin_ms=200.0),
                                  external=[fake_peer_view(variant, url, first_block=0)])
    try:
        plan = segments_of(("a", 0, 0), ("b", 1, 1), ("c", 2, 2))
        started = time.monotonic()
        rerouted = await cluster["a"].service.execute(
            request_id="hung", family=variant.family, variant=variant.name, exit_block=2, segments=plan,
            tensor=sample(variant), budget_ms=20_000.0, allow_degrade=False)
        waited_s = time.monotonic() - started
        cluster["a"].directory.mark_alive(NodeId("b"))
        with pytest.raises(DeadlineExceeded):  # the budget ends before the prediction's patience
            await cluster["a"].service.execute(
                request_id="hung-tight", family=variant.family, variant=variant.name, exit_block=2,
                segments=plan, tensor=sample(variant), budget_ms=150.0, allow_degrade=False)
    finally:
        release.set()
        await cluster.close()
        await runner.cleanup()
    assert rerouted.replans == 1 and "b" not in [timing.node for timing in rerouted.timings]
    assert 0.2 <= waited_s < 5.0  # the patience: predicted x 3 + 200 ms, not the 20 s budget


async def busy_peer() -> tuple[web.AppRunner, str, list[int]]:
    """A peer whose queue is full: every stage gets a typed 429 with Retry-After 0.7 s."""
    refused: list[int] = []

    async def stage(request: web.Request) -> web.Response:
        await request.read()
        refused.append(1)
        return error_response(Overloaded("queue full (64 waiting)", retry_after_s=0.7))

    runner, url = await fake_peer(stage)
    return runner, url, refused


async def test_when_the_only_peer_for_the_rest_is_busy_the_entry_answers_429_not_503(manifest):
    """A refusal for load is passed back as load: the client learns to back off and when to
    come back (at 8 nodes under overload, such requests ended as 503 peer_unavailable)."""
    variant = manifest.variant(CNN)
    runner, url, refused = await busy_peer()
    specs = [ServiceNodeSpec("a", {variant.name: (0, 0)})]
    cluster = await start_cluster(specs, manifest=manifest,
                                  external=[fake_peer_view(variant, url, first_block=1)])
    try:
        with pytest.raises(Overloaded) as caught:
            await cluster["a"].service.execute(
                request_id="busy", family=variant.family, variant=variant.name, exit_block=2,
                segments=segments_of(("a", 0, 0), ("b", 1, 2)), tensor=sample(variant), budget_ms=5_000.0,
                allow_degrade=False)
        # the next plans see b's queue as the wait it gave (0.7 s, counting down), not as idle
        pushed_back = find_peer(cluster["a"].service.directory, "b")
        assert pushed_back is not None and 400.0 < pushed_back.queue_ms <= 700.0
    finally:
        await cluster.close()
        await runner.cleanup()
    assert refused and caught.value.status == 429
    assert caught.value.retry_after_s == pytest.approx(0.7)  # the body's wait, not the header's whole second
    assert "refused for load" in caught.value.message


async def hot_entry_beside(manifest, variant, peer_url: str):
    """Entry "a" hosting all of ``variant`` but too hot (x10 the 300 ms budget per block) to run
    it in time, and peer "b" at ``peer_url`` hosting it too, as a's directory sees it."""
    heat = 10 * 300.0 / min(host_profile(variant))
    return await start_cluster([ServiceNodeSpec("a", {variant.name: (0, 2)}, heat=heat)], manifest=manifest,
                               external=[fake_peer_view(variant, peer_url, first_block=0)])


async def test_a_load_refusal_is_replanned_only_onto_a_placement_that_makes_the_time(manifest):
    """b refuses for load; the entry could run the blocks itself but is too hot to make the
    budget. The refusal goes back as load (429), which the controller answers by shedding to a
    cheaper arm, instead of a re-plan onto the entry that its own unit refuses for time."""
    variant = manifest.variant(CNN)
    runner, url, refused = await busy_peer()
    cluster = await hot_entry_beside(manifest, variant, url)
    try:
        with pytest.raises(Overloaded) as caught:
            await cluster["a"].service.execute(
                request_id="busy-and-hot", family=variant.family, variant=variant.name, exit_block=2,
                segments=segments_of(("b", 0, 2)), tensor=sample(variant), budget_ms=300.0, allow_degrade=False)
    finally:
        await cluster.close()
        await runner.cleanup()
    assert refused and cluster["a"].jobs == []  # the hot entry was never asked to run it
    assert "no other placement makes the time" in caught.value.message


async def test_an_error_after_a_replan_onto_the_entry_names_the_failure_that_caused_it(manifest):
    """b is gone (nothing listens at its address); the re-plan puts the blocks on the entry,
    whose unit is too hot for the budget. The refusal says so, and that it came after b's
    failure: a client (and a benchmark's miss breakdown) can tell it from a plan the entry
    chose for itself."""
    variant = manifest.variant(CNN)
    cluster = await hot_entry_beside(manifest, variant, f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(RefusedBeforeStart) as caught:
            await cluster["a"].service.execute(
                request_id="gone-then-hot", family=variant.family, variant=variant.name, exit_block=2,
                segments=segments_of(("b", 0, 2)), tensor=sample(variant), budget_ms=300.0, allow_degrade=False)
    finally:
        await cluster.close()
    assert caught.value.code == "refused_before_start"
    assert caught.value.message.endswith("(re-planned here after peer_unavailable at b)")


async def test_each_stage_reply_says_the_receivers_jobs_and_the_sender_hears_them(manifest):
    """The freshest word on a peer's load (``spreading``): its reply to a hop. The entry's own hop
    is marked so (its request is still counted by the entry), a forwarded hop is not."""
    variant = manifest.variant(resnet_name(manifest))
    heard: dict[str, list[tuple[str, int, int, int, bool]]] = {"a": [], "b": []}

    def hooks(node: str, jobs: int) -> StageHooks:
        return StageHooks(load_word=lambda: (jobs, 1, 10 * jobs),
                          on_peer_load=lambda peer, *said: heard[node].append((peer, *said)))

    specs = [ServiceNodeSpec("a", {variant.name: (0, 1)}), ServiceNodeSpec("b", {variant.name: (2, 2)}),
             ServiceNodeSpec("c", {variant.name: (3, 3)})]
    cluster = await start_cluster(specs, manifest=manifest, hooks={"a": hooks("a", 7), "b": hooks("b", 2),
                                                                   "c": hooks("c", 5)})
    try:
        outcome = await cluster["a"].service.execute(
            request_id="loads", family=variant.family, variant=variant.name, exit_block=3,
            segments=segments_of(("a", 0, 1), ("b", 2, 2), ("c", 3, 3)), tensor=sample(variant), budget_ms=30_000.0)
    finally:
        await cluster.close()
    assert [segment.node for segment in outcome.executed] == ["a", "b", "c"]
    assert heard == {"a": [("b", 2, 1, 20, True)], "b": [("c", 5, 1, 50, False)]}
