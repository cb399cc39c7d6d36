"""The gossip agent without sockets: join, bounded messages, sync paging, leave, the
coordinator's guidance and merged statistics, failover, and the wire codec."""

from __future__ import annotations

import random

import msgspec
import numpy as np
import pytest

from p2pinfer.errors import BadHeader, NodeIdTaken, PeerUnavailable, Unauthorized, UnsupportedVersion
from p2pinfer.membership.gossip import GossipAgent, GossipSettings
from p2pinfer.membership.messages import (
    PROTOCOL_VERSION,
    Address,
    Exchange,
    ExchangeReply,
    GossipMessage,
    Load,
    Member,
    StatsReply,
    Status,
    Thermal,
    decode_message,
    encode_message,
)
from p2pinfer.membership.view import View
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId

SETTINGS = GossipSettings(interval_s=1.0, stats_interval_s=2.0, guidance_interval_s=1.0, jitter=0.0)


class MemoryNetwork:
    """Agents calling each other directly; records every message's encoded size."""

    def __init__(self) -> None:
        self.agents: dict[str, GossipAgent] = {}
        self.down: set[str] = set()
        self.now = 0.0
        self.sizes: list[int] = []
        self.misaddressed: list[tuple[str, str]] = []
        self.sent: list[tuple[str, NodeId | None]] = []  # (address, recipient) of every message
        self.verify_recipients = True  # refuse a message addressed to another node id, as a node does

    def clock(self) -> float:
        return self.now

    async def send(self, address: Address, message: GossipMessage, timeout_s: float,
                   recipient: NodeId | None = None) -> GossipMessage:
        self.sizes.append(len(encode_message(message)))
        self.sent.append((address, recipient))
        if address in self.down or address not in self.agents:
            raise PeerUnavailable(f"{address} is down")
        if self.verify_recipients and recipient is not None and recipient != self.agents[address].node_id:
            self.misaddressed.append((address, recipient))
            raise Unauthorized(f"{address} is not {recipient}")
        reply = await self.agents[address].handle(decode_message(encode_message(message)))
        self.sizes.append(len(encode_message(reply)))
        return decode_message(encode_message(reply))

    def add(self, node_id: str, seeds: tuple[str, ...] = (), incarnation: int = 1,
            settings: GossipSettings = SETTINGS, address: str | None = None) -> GossipAgent:
        address = address or f"{node_id}:9000"
        agent = GossipAgent(node_id, address, self.send, seeds=seeds, settings=settings, clock=self.clock,
                            rng=random.Random(hash(node_id) & 0xFFFF), incarnation=incarnation)
        self.agents[address] = agent
        return agent

    def live_agents(self) -> list[GossipAgent]:
        agents = {id(agent): agent for address, agent in self.agents.items() if address not in self.down}
        return list(agents.values())

    async def rounds(self, count: int) -> None:
        for _ in range(count):
            for agent in self.live_agents():
                await agent.run_round()
            self.now += 1.0

    async def until(self, condition, limit: int = 60) -> int:
        for round_number in range(limit):
            if condition():
                return round_number
            await self.rounds(1)
        raise AssertionError(f"condition not reached within {limit} simulated rounds")


def big_record(index: int) -> Member:
    return Member(node_id=NodeId(f"n{index:04d}"), incarnation=1, address=Address(f"n{index:04d}:9000"),
                  load=Load(3, 1, 0.5, 64), thermal=Thermal(55.0, 0.1),
                  variants={"resnet-w1.0": [1.5] * 6, "resnet-w0.5": [0.8] * 6},
                  links={f"n{j:04d}": LinkEstimate(rtt_ms=2.0, bandwidth_mbps=100.0) for j in range(8)})


async def test_five_nodes_join_through_one_seed_and_agree():
    network = MemoryNetwork()
    seed = network.add("node-0")
    for index in range(1, 5):
        network.add(f"node-{index}", seeds=(seed.address,))
    everyone = {f"node-{index}" for index in range(5)}
    rounds = await network.until(lambda: all(
        {m.node_id for m in agent.live_members()} == everyone for agent in network.live_agents()))
    assert rounds <= 6
    assert all(agent.coordinator() == "node-0" for agent in network.live_agents())


async def test_soft_state_and_news_reach_every_node():
    network = MemoryNetwork()
    seed = network.add("a")
    agents = [seed] + [network.add(name, seeds=(seed.address,)) for name in "bcdef"]
    await network.rounds(5)
    agents[3].update_self(load=Load(queue_depth=7, in_flight=2, utilisation=0.9), thermal=Thermal(81.0, 0.4),
                          variants={"resnet-w1.0": [1.0, 2.0, 3.0]}, compute_units=["cpu", "npu"])
    agents[3].record_link("a", rtt_ms=3.5, bandwidth_mbps=80.0)
    await network.until(lambda: all(
        (m := agent.member("d")) is not None and m.load.queue_depth == 7 and m.links.get("a") is not None
        and m.variants == {"resnet-w1.0": [1.0, 2.0, 3.0]} for agent in agents), limit=10)


async def test_message_size_is_bounded_as_the_cluster_grows():
    """Deltas, not views: the largest message does not grow with N."""
    largest = {}
    for size in (16, 64, 256, 1024):
        network = MemoryNetwork()
        records = [big_record(index) for index in range(size)]
        template = View(records[0])
        for item in records[1:]:
            template._put(item, None)
        agents = []
        for item in records[:40]:  # only a few agents run; the rest are views' entries
            agent = network.add(item.node_id)
            agent.replace_view(template.replicate(item))
            agents.append(agent)
        for item in records[40:]:
            network.down.add(item.address)  # unreachable: probes fail, suspicions become news
        network.sizes.clear()
        await network.rounds(3)
        largest[size] = max(network.sizes)
    record_size = len(msgspec.msgpack.encode(big_record(0)))
    bound = SETTINGS.max_records * (record_size + 16) + 256
    assert all(value <= bound for value in largest.values()), (largest, bound)
    assert largest[1024] <= 1.2 * largest[64], largest


async def test_a_joiner_pulls_a_large_view_in_bounded_pages():
    network = MemoryNetwork()
    records = [big_record(index) for index in range(300)]
    template = View(records[0])
    for item in records[1:]:
        template._put(item, None)
    host = network.add(records[0].node_id)
    host.replace_view(template.replicate(records[0]))
    for item in records[1:]:
        network.agents[item.address] = host  # every address answers with the same view (cheap cluster)
    network.verify_recipients = False  # ... which a recipient check would see through
    joiner = network.add("z-joiner", seeds=(host.address,))
    await network.until(lambda: len(joiner.view) >= 301, limit=8)
    page = SETTINGS.sync_page_records + SETTINGS.max_records
    assert max(network.sizes) <= page * (len(msgspec.msgpack.encode(records[0])) + 16) + 256


async def test_graceful_leave_marks_left_not_dead():
    network = MemoryNetwork()
    seed = network.add("a")
    agents = [seed] + [network.add(name, seeds=(seed.address,)) for name in "bcd"]
    await network.rounds(4)
    await agents[2].stop(leave=True)
    network.down.add(agents[2].address)
    await network.until(lambda: all(agent.member("c").status is Status.LEFT
                                    for agent in network.live_agents()), limit=8)


async def test_dead_node_detected_and_restart_with_higher_incarnation_revives():
    network = MemoryNetwork()
    seed = network.add("a")
    for name in "bcde":
        network.add(name, seeds=(seed.address,))
    await network.rounds(4)
    victim = network.agents["c:9000"]
    network.down.add(victim.address)
    rounds = await network.until(lambda: all(agent.member("c").status is Status.DEAD
                                             for agent in network.live_agents()), limit=40)
    assert rounds <= 30
    network.down.discard(victim.address)
    reborn = network.add("c", seeds=(seed.address,), incarnation=victim.view.own.incarnation + 1000)
    await network.until(lambda: all(agent.member("c").status is Status.ALIVE
                                    and agent.member("c").incarnation == reborn.view.own.incarnation
                                    for agent in network.live_agents()), limit=10)


async def test_a_second_node_under_a_live_id_is_refused_by_seeds_and_by_the_holder():
    network = MemoryNetwork()
    seed = network.add("seed")
    holder = network.add("x", seeds=(seed.address,), incarnation=5)
    await network.until(lambda: seed.member("x") is not None)
    # joins through a seed that knows the live holder: the seed probes it, it answers
    through_seed = network.add("x", seeds=(seed.address,), incarnation=9, address="x:9001")
    await through_seed.run_round()
    assert isinstance(through_seed.identity_conflict, NodeIdTaken)
    assert "x:9000" in through_seed.identity_conflict.message
    assert seed.member("x").address == "x:9000" and seed.member("x").incarnation < 9
    assert seed.counters["identity_conflicts"] == 1
    # a retry within a few rounds reuses the verdict: no second probe of the holder
    handled = holder.counters["handled"]
    with pytest.raises(NodeIdTaken):
        await seed.handle(Exchange(sender=NodeId("x"), records=[through_seed.view.own]))
    assert holder.counters["handled"] == handled
    # joins through the holder itself: the holder refuses a message signed with its own id
    through_holder = network.add("x", seeds=(holder.address,), incarnation=9, address="x:9002")
    await through_holder.run_round()
    assert isinstance(through_holder.identity_conflict, NodeIdTaken)
    assert holder.counters["identity_conflicts"] == 1
    # the refused nodes stop: their loops end and they never send a "left" for the holder's id
    await through_seed.stop(leave=True)
    await network.rounds(3)
    assert all(agent.member("x").address == "x:9000" and agent.member("x").status is Status.ALIVE
               for agent in (seed, holder))


async def test_a_restart_at_the_same_or_a_new_address_is_no_conflict():
    network = MemoryNetwork()
    seed = network.add("seed")
    first = network.add("x", seeds=(seed.address,), incarnation=5)
    await network.until(lambda: seed.member("x") is not None)
    network.down.add(first.address)  # crashed, not yet suspected by anyone
    moved = network.add("x", seeds=(seed.address,), incarnation=50, address="x:9001")
    await moved.run_round()  # the seed probes x:9000, nobody answers: a restart elsewhere
    assert moved.identity_conflict is None
    assert seed.member("x").address == "x:9001" and seed.member("x").incarnation == 50
    again = network.add("x", seeds=(seed.address,), incarnation=60, address="x:9001")  # same address
    await again.run_round()
    assert again.identity_conflict is None and seed.member("x").incarnation == 60
    assert seed.counters["identity_conflicts"] == 0


async def test_a_refused_node_fails_joined_and_a_lonely_one_does_not():
    network = MemoryNetwork()
    seed = network.add("seed")
    network.add("x", seeds=(seed.address,))
    await network.rounds(2)
    impostor = network.add("x", seeds=(seed.address,), incarnation=9, address="x:9001")
    await impostor.start()
    with pytest.raises(NodeIdTaken):
        await impostor.joined(5.0)
    await impostor.stop()
    alone = network.add("y", seeds=("nowhere:1",))
    await alone.start()
    await alone.joined(5.0)  # an unreachable seed is no reason to fail
    await alone.stop()


async def test_guidance_stats_merge_and_coordinator_failover():
    network = MemoryNetwork()
    seed = network.add("a")
    agents = [seed] + [network.add(name, seeds=(seed.address,)) for name in "bcd"]
    await network.rounds(3)
    for index, agent in enumerate(agents):
        agent.publish_stats({"resnet@3": np.full(4, index + 1.0).tobytes()}, user_demand={"alice": 5.0, "bob": 50.0})
        agent.update_self(capacity_rps=20.0, variants={"resnet": [1.0] * 4})
    expected = np.full(4, 1.0 + 2 + 3 + 4).tobytes()
    await network.until(lambda: all(agent.merged_stats()[1].get("resnet@3") == expected for agent in agents),
                        limit=15)
    guidance = agents[3].guidance()
    assert guidance.coordinator == "a"
    assert guidance.fair_share_rps["alice"] == pytest.approx(20.0)  # demand 4 x 5 = 20, all of it
    assert guidance.fair_share_rps["bob"] == pytest.approx(60.0)  # the rest of 80 rps capacity
    assert guidance.admit_fraction["bob"] == pytest.approx(60.0 / 200.0, abs=1e-3)
    assert sum(guidance.fair_share_rps.values()) <= guidance.capacity_rps + 1e-6
    first_epoch = guidance.epoch
    # The coordinator dies: the next lowest id takes the role and publishes a newer epoch.
    network.down.add(seed.address)
    survivors = agents[1:]
    await network.until(lambda: all(agent.coordinator() == "b" and agent.guidance() is not None
                                    and agent.guidance().coordinator == "b" for agent in survivors), limit=40)
    assert all(agent.guidance().epoch > first_epoch for agent in survivors)
    for agent in survivors:
        agent.publish_stats({"resnet@3": np.ones(4).tobytes()})
    await network.until(lambda: all(agent.merged_stats()[1].get("resnet@3") == np.full(4, 3.0).tobytes()
                                    for agent in survivors), limit=15)


async def test_non_coordinator_points_to_the_coordinator_for_stats():
    network = MemoryNetwork()
    seed = network.add("a")
    other = network.add("b", seeds=(seed.address,))
    await network.rounds(3)
    reply = await other.handle(msgspec.convert({"kind": "stats_report", "sender": "c"}, GossipMessage))
    assert isinstance(reply, StatsReply) and reply.merged is None and reply.coordinator == "a"


async def test_unexpected_message_kind_is_a_bad_header():
    agent = MemoryNetwork().add("a")
    with pytest.raises(BadHeader):
        await agent.handle(ExchangeReply(sender=NodeId("b")))


def test_codec_refuses_garbage_and_unknown_versions():
    message = Exchange(sender=NodeId("a"), records=[big_record(1)])
    assert decode_message(encode_message(message)) == message
    with pytest.raises(BadHeader):
        decode_message(b"\x93not msgpack")
    with pytest.raises(BadHeader):
        decode_message(msgspec.msgpack.encode({"kind": "nope", "sender": "a"}))
    future = msgspec.msgpack.encode({"kind": "exchange", "sender": "a", "version": PROTOCOL_VERSION + 1})
    with pytest.raises(UnsupportedVersion):
        decode_message(future)


def test_records_stay_decodable_when_fields_are_appended():
    """Records are encoded as arrays: an older node ignores trailing fields it does not know."""
    class FutureMember(Member, frozen=True, kw_only=True, array_like=True):
        energy_joules: float = 1.5

    future = FutureMember(node_id=NodeId("a"), incarnation=3, address=Address("a:1"))
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(future), type=Member)
    assert decoded.node_id == "a" and decoded.incarnation == 3


async def test_known_members_are_addressed_by_node_id_and_only_first_contacts_by_address():
    """Gossip to a member of the view is signed for its node id (no other node accepts it,
    whatever its address is called); only a seed or an introduction goes by address."""
    network = MemoryNetwork()
    seed = network.add("a")
    agents = [seed] + [network.add(name, seeds=(seed.address,)) for name in "bc"]
    await network.until(lambda: all(agent.view.live_count == 3 for agent in agents), limit=10)
    first_contacts = [(address, recipient) for address, recipient in network.sent if recipient is None]
    assert first_contacts and {address for address, _ in first_contacts} == {seed.address}
    network.sent.clear()
    await network.rounds(3)
    assert network.sent and all(recipient == network.agents[address].node_id for address, recipient in network.sent)
    assert not network.misaddressed
