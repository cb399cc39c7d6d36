"""Fuzz real nodes: >= 5,000 cases on each inference route and encoding, answers counted by
status; then a node's RSS before and after 10,000 bad requests.

Routes: ``/v1/infer`` binary frames, JSON and raw image bodies (``image/jpeg``/``image/png``,
knobs in the query); ``/v2/models/{family}/infer`` JSON, the binary tensor extension
(``Inference-Header-Content-Length``) and ``BYTES`` images (base64 in JSON or length-prefixed
in the binary extension). Tensor routes go to a node hosting ``digits-cnn``; image routes to
one hosting the pretrained ``text-orientation-r160`` (a family with image preprocessing, so
the images reach the decoder).

Cases: byte mutations (flip, insert, delete, truncate) of a valid body, and generated
requests whose fields take hostile values (NaN, Inf, huge floats, negative or zero weights,
long ids, deep nesting, deep nesting behind brackets inside strings, wrong types, hostile
header lengths, truncated or garbage or oversized images). The figure to reach: no answer
>= 500 except 504.

    python -m benchmarks.fuzz [--cases 5000] [--bad 10000] [--seed 18]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from p2pinfer.cli.cluster import NodeProcess, start_node
from p2pinfer.hostile_requests import NODES, ROUTES, Case, bad_case
from p2pinfer.protocol.error_body import decode_error_body

RESULTS = Path(__file__).resolve().parent / "results"


async def fuzz_route(session: aiohttp.ClientSession, url: str, case: Callable[[random.Random], Case], count: int,
                     seed: int, concurrency: int = 8, limit_s: float = 600.0) -> dict[str, Any]:
    rng = random.Random(seed)
    cases = [case(rng) for _ in range(count)]
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()  # the error bodies' codes: which check refused what
    examples: dict[int, str] = {}
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for item in cases:
        queue.put_nowait(item)
    deadline = time.monotonic() + limit_s

    async def worker() -> None:
        while not queue.empty() and time.monotonic() < deadline:
            item = queue.get_nowait()
            try:
                async with session.post(item.url(url), data=item.body, headers=item.request_headers(),
                                        timeout=aiohttp.ClientTimeout(total=30)) as answer:
                    text = await answer.read()
                    statuses[answer.status] += 1
                    if answer.status >= 400:
                        answer_body = decode_error_body(text)
                        codes[answer_body.code or "-" if answer_body is not None else "not an error body"] += 1
                    if answer.status >= 500 and answer.status not in examples:
                        examples[answer.status] = text[:300].decode("utf-8", "replace")
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                statuses[-1] += 1
                examples.setdefault(-1, repr(error))

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    server_errors = sum(n for status, n in statuses.items() if status >= 500 and status != 504)
    return {"cases": sum(statuses.values()), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "codes": dict(codes.most_common()), "answers_5xx_not_504": server_errors, "examples_5xx": examples}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _internal_errors(session: aiohttp.ClientSession, node: NodeProcess) -> float:
    async with session.get(node.url + "/metrics") as answer:
        text = await answer.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("p2pinfer_internal_errors_total"))


async def main_async(cases: int, bad: int, seed: int, routes: list[str] | None = None) -> dict[str, Any]:
    chosen = {name: ROUTES[name] for name in (routes or list(ROUTES))}
    needed = {route.node for route in chosen.values()} | {"tensors"}
    nodes: dict[str, NodeProcess] = {}
    try:
        for name in NODES:
            if name in needed:
                nodes[name] = start_node(NODES[name])
        report: dict[str, Any] = {"nodes": {name: node.url for name, node in nodes.items()},
                                  "cases_per_route": cases, "seed": seed, "routes": {}}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
            for index, (name, route) in enumerate(ROUTES.items()):
                if name not in chosen:
                    continue
                started = time.monotonic()
                result = await fuzz_route(session, nodes[route.node].url + route.path, route.case, cases, seed + index)
                result["seconds"] = round(time.monotonic() - started, 1)
                report["routes"][name] = result
                print(name, result["statuses"], "5xx(not 504):", result["answers_5xx_not_504"], flush=True)
            # RSS: warm up, then 10,000 bad requests with fresh client-chosen values each time
            node = nodes["tensors"]
            await fuzz_route(session, node.url + "/v1/infer", bad_case, 1000, seed + 98)
            before = rss_bytes(node.process.pid)
            flood = await fuzz_route(session, node.url + "/v1/infer", bad_case, bad, seed + 97)
            after = rss_bytes(node.process.pid)
            report["rss"] = {"bad_requests": flood["cases"], "statuses": flood["statuses"],
                             "before_mib": round(before / 2**20, 1), "after_mib": round(after / 2**20, 1),
                             "change_percent": round(100 * (after - before) / before, 2)}
            print("rss", report["rss"], flush=True)
            report["internal_errors_metric"] = sum([await _internal_errors(session, node) for node in nodes.values()])
    finally:
        for node in nodes.values():
            node.terminate()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000, help="cases per route")
    parser.add_argument("--bad", type=int, default=10000, help="bad requests of the RSS measurement")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"comma separated, of {', '.join(ROUTES)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz.json")
    arguments = parser.parse_args()
    routes = [name for name in arguments.routes.split(",") if name]
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        parser.error(f"unknown routes {unknown}; choose from {', '.join(ROUTES)}")
    report = asyncio.run(main_async(arguments.cases, arguments.bad, arguments.seed, routes))
    report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
