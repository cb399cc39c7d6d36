"""Fairness on real node processes: one heavy user asking for far more than its max-min
share is throttled by the coordinator's guidance (its excess served with the cheapest arm),
the light users are not, and they keep getting on-time answers. Orderings only: the heavy
user's admission fraction is below 1, the light users' is not, and the light users' on-time
share is at least the heavy user's.

The heavy user runs 24 closed-loop workers: the coordinator's capacity is the cluster's rate at
the cheapest arm, and 8 workers waiting for the best arm's answers on an idle host asked for
less than that (no throttling was due); 24 fill the queues, are refused in part, and ask
again at once.
"""

from __future__ import annotations

import threading
import time

from p2pinfer import Client
from p2pinfer.errors import P2PError
from p2pinfer.testing import wait_until
from tests.p2pinfer.pinned_load import RESNET, SLOW, get_json, resnet_image, start_nodes

BEST = "digits-resnet-w0.5"


def guidance_fractions(node) -> dict[str, float]:
    guidance = get_json(f"{node.url}/v1/peers")["guidance"] or {}
    return guidance.get("admit_fraction") or {}


def heavy_throttled(node) -> dict[str, float] | None:
    fractions = guidance_fractions(node)
    return fractions if fractions.get("heavy", 1.0) < 1.0 else None


def test_one_heavy_user_is_throttled_not_the_light_ones(node_factory):
    extra = ["--variants", f"{RESNET},{BEST}", "--device-profile", SLOW, "--policy", "fixed",
             "--arm", f"{BEST}@3"]
    nodes = start_nodes(node_factory, [("f0", extra), ("f1", extra)])
    arms: dict[str, list[str]] = {"heavy": [], "light-0": [], "light-1": []}
    stop = threading.Event()
    ends = time.monotonic() + 60

    def user(name: str, workers: int, pause_s: float) -> None:
        def loop(worker: int) -> None:
            with Client([node.url for node in nodes]) as client:
                for index in range(400):
                    if stop.is_set() or time.monotonic() > ends:
                        return
                    try:
                        result = client.infer(resnet_image(index), deadline_ms=5000, family="digits-resnet",
                                              user=name)
                        arms[name].append("on-time" if result.deadline_met else "late")
                    except P2PError:
                        arms[name].append("error")
                    stop.wait(pause_s)
        threads = [threading.Thread(target=loop, args=(worker,), daemon=True) for worker in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=70)

    runners = [threading.Thread(target=user, args=("heavy", 24, 0.0), daemon=True),
               threading.Thread(target=user, args=("light-0", 1, 0.5), daemon=True),
               threading.Thread(target=user, args=("light-1", 1, 0.5), daemon=True)]
    for runner in runners:
        runner.start()
    try:
        fractions = wait_until(lambda: heavy_throttled(nodes[1]), timeout_s=30,
                               message="the coordinator to throttle the heavy user")
        assert fractions.get("light-0", 1.0) >= 1.0 and fractions.get("light-1", 1.0) >= 1.0, fractions
        marks = {name: len(answers) for name, answers in arms.items()}
        wait_until(lambda: all(len(arms[name]) >= marks[name] + 4 for name in arms), timeout_s=30,
                   message="a few answers for every user under the guidance")
    finally:
        stop.set()
        for runner in runners:
            runner.join(timeout=70)

    def on_time_share(name: str) -> float:
        answers = arms[name][marks[name]:]
        return sum(1 for outcome in answers if outcome == "on-time") / len(answers)

    heavy, light = on_time_share("heavy"), min(on_time_share("light-0"), on_time_share("light-1"))
    assert light >= heavy, f"light users should fare no worse than the heavy one: heavy {heavy:.2f}, light {light:.2f}"
