"""The ``p2pinfer`` command: node, cluster, infer, status, demo, bench, zoo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2pinfer.cli.cluster import announce_ready
from p2pinfer.cli.event_loop import EVENT_LOOPS, EventLoopUnavailable, run_on_loop


def _add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 picks a free one)")
    parser.add_argument("--node-id", default=None, help="stable id of this node (default: host-random)")
    parser.add_argument("--zoo", default=None, help="zoo directory (default: the embedded zoo)")
    parser.add_argument("--variants", default="all",
                        help="hosted variants: all | family | variant[:first-last], comma separated")
    parser.add_argument("--device-profile", default="native", help="emulated device (native, rpi4, jetson-nano, ...)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for this node")
    parser.add_argument("--workers", type=int, default=1, help="executor worker threads per compute unit")
    parser.add_argument("--units", default="cpu",
                        help="compute units, each with its own executor: cpu, cpu:1, cuda:0 ... or auto")
    parser.add_argument("--cpu-backend", default="auto", choices=("auto", "cpu-eager", "onnxruntime"),
                        help="what runs CPU units' blocks: ONNX Runtime (blocks exported at load, cached; the "
                             "'onnx' extra), PyTorch eager, or auto (ONNX Runtime where installed)")
    parser.add_argument("--secret", default=None, help="cluster secret for signing peer messages")
    parser.add_argument("--queue-capacity", type=int, default=64, help="bounded EDF queue size (429 when full)")
    parser.add_argument("--max-body-bytes", type=int, default=8 << 20, help="largest accepted request body")
    parser.add_argument("--max-batch", type=int, default=8, help="largest micro-batch (1 disables batching)")
    parser.add_argument("--batch-window-ms", type=float, default=2.0, help="how long a batch may wait to fill")
    parser.add_argument("--inline-max-ms", type=float, default=2.0,
                        help="an idle compute unit runs a job predicted under this on the event loop (0: never)")
    parser.add_argument("--policy", default="linucb", choices=_policy_choices(),
                        help="arm selection policy: a bandit, random, fixed, or a static baseline")
    parser.add_argument("--policy-seed", type=int, default=None, help="seed of a randomised policy")
    parser.add_argument("--arm", default=None, help="fixed arm VARIANT@EXIT for --policy fixed")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to drain on SIGTERM")
    parser.add_argument("--seed", action="append", default=[], metavar="HOST:PORT", help="peer to join (repeatable)")
    parser.add_argument("--peers-file", default=None, help="file of HOST:PORT lines to join (# comments)")
    parser.add_argument("--mdns", action="store_true", help="also discover peers on the LAN with mDNS")
    parser.add_argument("--links", default=None, metavar="FILE",
                        help='emulated outgoing links, JSON {"links": {"a->b": {bandwidth_mbps, rtt_ms, jitter_ms, '
                             'loss, trace, trace_scale}}, "default": {...}, "seed": N}')
    parser.add_argument("--trace-root", action="append", default=[], help="where relative trace paths are found")
    parser.add_argument("--gossip-interval", type=float, default=0.5, help="seconds per gossip round")
    parser.add_argument("--not-coordinator", action="store_true", help="never hold the coordinator role")
    parser.add_argument("--event-loop", default="auto", choices=EVENT_LOOPS,
                        help="the node's event loop: uvloop (less CPU per request), asyncio's own, or auto "
                             "(uvloop where installed)")
    parser.add_argument("--thermal-sensor", choices=("auto", "on", "off"), default="auto",
                        help="read /sys/class/thermal (auto: only for the native profile)")


def _policy_choices() -> list[str]:
    from p2pinfer.planning.selection import known_policies

    return known_policies()


def node_config_from(arguments: argparse.Namespace):
    from p2pinfer.runtime.node import NodeConfig

    return NodeConfig(
        host=arguments.host, port=arguments.port, node_id=arguments.node_id, zoo_dir=arguments.zoo,
        variants=arguments.variants, device_profile=arguments.device_profile, threads=arguments.threads,
        workers=arguments.workers, secret=arguments.secret, queue_capacity=arguments.queue_capacity,
        max_body_bytes=arguments.max_body_bytes, max_batch=arguments.max_batch,
        batch_window_ms=arguments.batch_window_ms, inline_max_ms=arguments.inline_max_ms,
        policy=arguments.policy, fixed_arm=arguments.arm,
        drain_timeout_s=arguments.drain_timeout, seeds=list(arguments.seed), peers_file=arguments.peers_file,
        mdns=arguments.mdns, links_file=arguments.links, trace_roots=list(arguments.trace_root),
        gossip_interval_s=arguments.gossip_interval, eligible_coordinator=not arguments.not_coordinator,
        use_thermal_sensor={"auto": None, "on": True, "off": False}[arguments.thermal_sensor],
        policy_seed=arguments.policy_seed, units=arguments.units,
        cpu_backend=arguments.cpu_backend)


async def run_node(config) -> int:
    """Start a node, announce readiness on stdout, serve until SIGTERM/SIGINT, drain, exit 0."""
    from p2pinfer.runtime.node import Node

    node = Node(config)
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    settle_heap()
    announce_ready(node.node_id, node.url, node.port)
    await stop.wait()
    await node.stop()
    return 0


def settle_heap() -> None:
    """Take what the start built out of the garbage collector's sight (``gc.freeze``).

    Why: a started node holds a few hundred thousand long-lived objects (torch, the models,
    the zoo's manifest, the metrics) that are never garbage, and every full collection walked
    all of them, ~170 ms each, while the request logs fill (1190 -> 1020 us of CPU per request
    under 8 clients in that phase, ONNX Runtime's digits-cnn-w1; once the logs are full no
    collection runs at all, and freezing changes nothing). Frozen
    objects are still freed by reference counting; only cycles among them would stay, and the
    start makes none that matter. One node per process (the CLI), so the whole heap is the
    node's; nodes started in-process (tests) leave the caller's heap alone."""
    gc.collect()
    gc.freeze()


def command_node(arguments: argparse.Namespace) -> int:
    """A node that cannot start says why in one line (exit 2), not with a traceback."""
    from p2pinfer.errors import P2PError
    from zoo.errors import ZooError  # a unit's backend this machine lacks, weights that fail their check

    try:
        code = run_on_loop(run_node(node_config_from(arguments)), arguments.event_loop)
    except (P2PError, ZooError, OSError, ValueError, EventLoopUnavailable) as error:
        message = error.message if isinstance(error, P2PError) else f"{type(error).__name__}: {error}"
        print(f"p2pinfer node: cannot start: {message}", file=sys.stderr)
        return 2
    # The node has drained, left the cluster and closed its sockets: exit now. Interpreter
    # finalisation with torch loaded takes ~2 s, which would break "exit within
    # --drain-timeout + 1 s" for supervisors that SIGKILL after the drain deadline.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


DIGIT_FAMILIES = ("digits-cnn", "digits-resnet")


def _infer_tensor(arguments: argparse.Namespace) -> Any:
    """The tensor ``--input`` or ``--digit`` names, or ``ValueError`` saying what is wrong with it."""
    import numpy as np

    if arguments.input:
        try:
            return np.load(arguments.input, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as error:  # missing, not .npy, or pickled objects (never loaded)
            raise ValueError(f"--input {arguments.input}: {error}") from None
    if arguments.family not in DIGIT_FAMILIES:
        raise ValueError(f"--digit sends a held-out digit, which {arguments.family!r} does not take: use "
                         f"--family {' or '.join(DIGIT_FAMILIES)}, or send --image / --input")
    from zoo.dataset import held_out
    from zoo.family import get_family

    images, labels = held_out(get_family(arguments.family).input_shape)
    if not 0 <= arguments.digit < len(labels):
        raise ValueError(f"--digit {arguments.digit}: the held-out set has digits 0 to {len(labels) - 1}")
    print(f"held-out digit #{arguments.digit}: true label {int(labels[arguments.digit])}", file=sys.stderr)
    return images[arguments.digit:arguments.digit + 1].numpy()


def command_infer(arguments: argparse.Namespace) -> int:
    """One request through the SDK: 0 answered, 1 the node refused (its typed error), 2 bad input here."""
    from p2pinfer.client import Client, image_payload
    from p2pinfer.errors import P2PError

    options = {"family": arguments.family, "user": arguments.user, "variant": arguments.variant}
    try:
        if arguments.image:
            try:
                image, _ = image_payload(Path(arguments.image))  # checked here: a local mistake is not the node's
            except (OSError, P2PError) as error:
                raise ValueError(f"--image {arguments.image}: {getattr(error, 'message', error)}") from None
        else:
            tensor = _infer_tensor(arguments)
    except ValueError as error:
        print(f"p2pinfer infer: {error}", file=sys.stderr)
        return 2
    try:
        with Client(arguments.url.split(",")) as client:
            if arguments.image:
                result = client.infer_image(image, deadline_ms=arguments.deadline_ms, **options)
            else:
                result = client.infer(tensor, deadline_ms=arguments.deadline_ms, **options)
    except P2PError as error:  # the node's typed refusal, or none reached
        print(f"error ({error.code}): {error.message}", file=sys.stderr)
        return 1
    import msgspec

    print(msgspec.json.format(msgspec.json.encode(result), indent=2).decode())
    return 0


def command_status(arguments: argparse.Namespace) -> int:
    from p2pinfer.cli.status import show_status

    return show_status(arguments.url)


def command_cluster(arguments: argparse.Namespace) -> int:
    """Start N nodes on loopback (the first is every other node's seed) and wait for Ctrl-C."""
    import secrets
    import time

    from p2pinfer.cli.cluster import LocalCluster
    from p2pinfer.errors import NodeStartError

    profiles = arguments.profiles.split(",") if arguments.profiles else ["native"]
    secret = arguments.secret or secrets.token_hex(16)
    with LocalCluster() as cluster:
        first = None
        for index in range(arguments.nodes):
            node_arguments = ["--node-id", f"node-{index}", "--device-profile", profiles[index % len(profiles)],
                              "--variants", arguments.variants, "--policy", arguments.policy, "--secret", secret]
            if arguments.zoo is not None:
                node_arguments += ["--zoo", arguments.zoo]
            if first is not None:
                node_arguments += ["--seed", first.address]
            try:
                node = cluster.start(node_arguments)
            except NodeStartError as error:  # its own one line says why (the others are stopped on the way out)
                print(f"p2pinfer cluster: node-{index} did not start: {error.message.strip()}", file=sys.stderr)
                return 2
            first = first or node
            print(f"node-{index} ({profiles[index % len(profiles)]}): {node.url}", flush=True)
        assert first is not None  # --nodes is at least 1 (_at_least_one)
        print(f"try: p2pinfer status {first.url}   ·   Ctrl-C stops the cluster", flush=True)
        try:
            while all(node.alive() for node in cluster.nodes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


def command_bench(arguments: argparse.Namespace) -> int:
    from benchmarks.bench import main as bench_main

    return int(bench_main(arguments.arguments) or 0)


def command_demo(arguments: argparse.Namespace) -> int:
    from benchmarks.demo import main as demo_main

    return int(demo_main(arguments.arguments) or 0)


def command_zoo(arguments: argparse.Namespace) -> int:
    from p2pinfer.cli.zoo import run_zoo_command

    return run_zoo_command(arguments)


def build_parser() -> argparse.ArgumentParser:
    from zoo.import_arguments import add_exits_arguments, add_import_arguments

    parser = argparse.ArgumentParser(prog="p2pinfer", description="Collaborative DNN inference on edge networks.")
    commands = parser.add_subparsers(dest="command", required=True)

    node = commands.add_parser("node", help="run one node (one per device)")
    _add_node_arguments(node)
    node.set_defaults(handler=command_node)

    infer = commands.add_parser("infer", help="send one inference request to a node")
    infer.add_argument("url", help="entry node URL (comma separated for failover)")
    source = infer.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help=".npy file holding one input tensor")
    source.add_argument("--digit", type=int, help="index of a held-out digit to send (digits families)")
    source.add_argument("--image", help="a JPEG or PNG file: the node decodes and preprocesses it as the "
                                        "family's manifest says (e.g. --family text-orientation on a node "
                                        "started with --zoo zoo/pretrained)")
    infer.add_argument("--family", default="digits-cnn")
    infer.add_argument("--variant", default=None)
    infer.add_argument("--deadline-ms", type=float, default=200.0)
    infer.add_argument("--user", default="cli")
    infer.set_defaults(handler=command_infer)

    status = commands.add_parser("status", help="show a node's (and its cluster's) state")
    status.add_argument("url")
    status.set_defaults(handler=command_status)

    cluster = commands.add_parser("cluster", help="start a local N-node cluster on loopback")
    cluster.add_argument("--nodes", type=_at_least_one, default=3)
    cluster.add_argument("--profiles", default="", help="device profiles, comma separated, cycled over nodes")
    cluster.add_argument("--variants", default="all")
    cluster.add_argument("--zoo", default=None, help="zoo directory every node serves (default: the embedded zoo; "
                                                     "zoo/pretrained for the text-orientation family)")
    cluster.add_argument("--policy", default="linucb", choices=_policy_choices(),
                         help="every node's arm selection policy (the node's --policy)")
    cluster.add_argument("--secret", default=None)
    cluster.set_defaults(handler=command_cluster)

    bench = commands.add_parser("bench", add_help=False,
                                help="run a benchmark scenario against live local clusters (see `bench --help`)")
    bench.add_argument("arguments", nargs=argparse.REMAINDER)
    bench.set_defaults(handler=command_bench)

    demo = commands.add_parser("demo", add_help=False,
                               help="a 4-node local cluster under ~60 s of mixed multi-user load (see `demo --help`)")
    demo.add_argument("arguments", nargs=argparse.REMAINDER)
    demo.set_defaults(handler=command_demo)

    zoo = commands.add_parser("zoo", help="list, show, profile, import into or add exits to the model zoo")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True)
    zoo_list = zoo_commands.add_parser("list", help="variants with accuracy, params, FLOPs")
    zoo_list.add_argument("--zoo", default=None)
    zoo_show = zoo_commands.add_parser("show", help="one variant's blocks, exits and boundaries")
    zoo_show.add_argument("variant")
    zoo_show.add_argument("--zoo", default=None)
    zoo_profile = zoo_commands.add_parser("profile", help="per-block latency on this machine (cached)")
    zoo_profile.add_argument("variants", nargs="*")
    zoo_profile.add_argument("--zoo", default=None)
    zoo_profile.add_argument("--threads", type=int, default=1)
    zoo_profile.add_argument("--repeats", type=int, default=20)
    zoo_profile.add_argument("--no-cache", action="store_true")
    zoo_demo = zoo_commands.add_parser("demo", help="classify a few held-out digits with every variant")
    zoo_demo.add_argument("--zoo", default=None)
    add_import_arguments(zoo_commands.add_parser(
        "import", help="import an ONNX file or a package.module:factory classifier into a zoo directory",
        description="Trace the model, cut it where exactly one tensor is live, and write a zoo directory "
                    "(one safetensors file for the variant with each block's tensors under its own keys, a "
                    "manifest entry, a graph description that loads without pickle) "
                    "that `p2pinfer node --zoo DIR` serves."))
    add_exits_arguments(zoo_commands.add_parser(
        "exits", help="train early-exit heads for an imported family and measure every exit's accuracy"))
    zoo.set_defaults(handler=command_zoo)
    return parser


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("bench", "demo"):  # their own parsers own every option, --help included
        handler = command_bench if argv[0] == "bench" else command_demo
        return handler(argparse.Namespace(arguments=argv[1:]))
    arguments = build_parser().parse_args(argv)
    return int(arguments.handler(arguments) or 0)


if __name__ == "__main__":
    sys.exit(main())
