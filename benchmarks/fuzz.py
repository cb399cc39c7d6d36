"""Fuzz a real node: >= 5,000 cases on each inference route (``/v1/infer`` binary frames and
JSON, ``/v2/models/{family}/infer`` JSON), answers counted by status; then the node's RSS
before and after 10,000 bad requests.

Cases: ``p2pinfer.hostile_requests`` (byte mutations of a valid body, and generated requests
whose fields take hostile values; the route tests draw from the same generators). The figure
to reach: no answer >= 500 except 504.

    python -m benchmarks.fuzz [--cases 5000] [--bad 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from p2pinfer.cli.cluster import start_node
from p2pinfer.hostile_requests import CASES_BY_ROUTE, INPUT_SHAPE, JSON, Case, json_body

RESULTS = Path(__file__).resolve().parent / "results"


async def fuzz_route(session: aiohttp.ClientSession, url: str, case: Case, count: int, seed: int,
                     concurrency: int = 8, limit_s: float = 600.0) -> dict[str, Any]:
    rng = random.Random(seed)
    cases = [case(rng) for _ in range(count)]
    statuses: Counter[int] = Counter()
    examples: dict[int, str] = {}
    queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    for item in cases:
        queue.put_nowait(item)
    deadline = time.monotonic() + limit_s

    async def worker() -> None:
        while not queue.empty() and time.monotonic() < deadline:
            body, content_type = queue.get_nowait()
            try:
                async with session.post(url, data=body, headers={"Content-Type": content_type},
                                        timeout=aiohttp.ClientTimeout(total=30)) as answer:
                    text = await answer.read()
                    statuses[answer.status] += 1
                    if answer.status >= 500 and answer.status not in examples:
                        examples[answer.status] = text[:300].decode("utf-8", "replace")
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                statuses[-1] += 1
                examples.setdefault(-1, repr(error))

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    server_errors = sum(n for status, n in statuses.items() if status >= 500 and status != 504)
    return {"cases": sum(statuses.values()), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "answers_5xx_not_504": server_errors, "examples_5xx": examples}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def main_async(cases: int, bad: int, seed: int) -> dict[str, Any]:
    node = start_node(["--variants", "digits-cnn"])
    try:
        report: dict[str, Any] = {"node": node.url, "cases_per_route": cases, "seed": seed, "routes": {}}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
            for index, (name, (path, case)) in enumerate(CASES_BY_ROUTE.items()):
                started = time.monotonic()
                result = await fuzz_route(session, node.url + path, case, cases, seed + index)
                result["seconds"] = round(time.monotonic() - started, 1)
                report["routes"][name] = result
                print(name, result["statuses"], "5xx(not 504):", result["answers_5xx_not_504"], flush=True)
            # RSS: warm up, then 10,000 bad requests with fresh client-chosen values each time

            def bad_case(rng: random.Random) -> tuple[bytes, str]:
                user = f"user-{rng.randrange(1 << 60):x}"
                document = {"deadline_ms": 2000, "family": "digits-cnn", "user": user + "!" * rng.randint(0, 1),
                            "request_id": f"id-{rng.randrange(1 << 60):x}"}
                document["data"] = np.full(INPUT_SHAPE, rng.choice([3e38, float("nan")]), np.float32).tolist()
                return json_body(document), JSON

            await fuzz_route(session, node.url + "/v1/infer", bad_case, 1000, seed + 98)
            before = rss_bytes(node.process.pid)
            flood = await fuzz_route(session, node.url + "/v1/infer", bad_case, bad, seed + 97)
            after = rss_bytes(node.process.pid)
            report["rss"] = {"bad_requests": flood["cases"], "statuses": flood["statuses"],
                             "before_mib": round(before / 2**20, 1), "after_mib": round(after / 2**20, 1),
                             "change_percent": round(100 * (after - before) / before, 2)}
            print("rss", report["rss"], flush=True)
            async with session.get(node.url + "/metrics") as answer:
                text = await answer.text()
            report["internal_errors_metric"] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                                   if line.startswith("p2pinfer_internal_errors_total"))
    finally:
        node.terminate()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--bad", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=18)
    arguments = parser.parse_args()
    report = asyncio.run(main_async(arguments.cases, arguments.bad, arguments.seed))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'fuzz.json'}")


if __name__ == "__main__":
    main()
