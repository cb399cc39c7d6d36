"""Cluster membership: member records and their merge, SWIM failure detection, push-pull
gossip, discovery, and the coordinator role.

The pure parts (``view.merge``, ``swim``, ``coordinator``, ``dissemination``) hold no clock
and no sockets; ``benchmarks/gossip_sim.py`` drives the same ``GossipAgent`` on simulated
time.

How a node hosts it (all on the node's event loop; none of this is thread-safe)::

    from p2pinfer.protocol.auth import Verifier, peer_auth_middleware
    from p2pinfer.membership import (GossipAgent, HttpTransport, MdnsDiscovery, gossip_routes,
                                     initial_contacts)

    transport = HttpTransport(node_id, secret)                 # signed POST /v1/gossip
    agent = GossipAgent(node_id, "advertised-host:port", transport,
                        seeds=initial_contacts(args.seed, args.peers_file))
    verifier = Verifier(secret, recipients={node_id, "advertised-host:port"})  # the names it answers to
    app = web.Application(middlewares=[peer_auth_middleware(verifier, on_reject=count_rejection)])
    app.add_routes(gossip_routes(agent, secret, on_reject=count_rejection))
    # after the server listens:
    await agent.start()
    if args.mdns:                                              # opt-in
        mdns = MdnsDiscovery(node_id, host, port, lambda peer, address: agent.introduce(address))
        await mdns.start()
    # feed the own record (soft state: cheap, call as often as you like)
    agent.update_self(load=Load(queue_depth, in_flight, utilisation, queue_capacity),
                      thermal=Thermal(temperature_c, throttle), capacity_rps=measured)
    agent.update_self(variants={"digits-resnet-w1.0": [ms per block, ...]},
                      compute_units=["cpu"])                   # news: when it changes
    agent.record_link(peer_id, rtt_ms, bandwidth_mbps)         # after a real transfer
    agent.publish_stats({arm_key: blob}, user_demand={user: rps}, variant_demand={v: rps})
    # read
    agent.live_members(); agent.member(peer_id); agent.coordinator(); agent.guidance()
    agent.merged_stats()      # (version, {arm_key: merged blob})
    agent.counters            # for /metrics
    # shutdown
    await agent.stop(leave=True); await transport.close()
"""

from p2pinfer.membership.coordinator import (
    GuidanceSettings,
    compute_guidance,
    elect,
    max_min_fair_shares,
    sum_float64_blobs,
)
from p2pinfer.membership.discovery import MdnsDiscovery, initial_contacts, load_peers_file, parse_peers_file
from p2pinfer.membership.gossip import GossipAgent, GossipSettings, Send
from p2pinfer.membership.http import GOSSIP_PATH, HttpTransport, gossip_routes
from p2pinfer.membership.messages import (
    PROTOCOL_VERSION,
    Address,
    Guidance,
    Load,
    Member,
    ReplicaHint,
    Status,
    Thermal,
    member_as_json,
)
from p2pinfer.membership.view import Change, ChangeKind, View, merge, supersedes
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId

__all__ = [
    "GOSSIP_PATH",
    "PROTOCOL_VERSION",
    "Address",
    "Change",
    "ChangeKind",
    "GossipAgent",
    "GossipSettings",
    "Guidance",
    "GuidanceSettings",
    "HttpTransport",
    "LinkEstimate",
    "Load",
    "MdnsDiscovery",
    "Member",
    "NodeId",
    "ReplicaHint",
    "Send",
    "Status",
    "Thermal",
    "View",
    "compute_guidance",
    "elect",
    "gossip_routes",
    "initial_contacts",
    "load_peers_file",
    "max_min_fair_shares",
    "member_as_json",
    "merge",
    "parse_peers_file",
    "sum_float64_blobs",
    "supersedes",
]
