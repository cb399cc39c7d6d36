"""The node side of arm selection: which (variant, exit) and where, per request.

Two kinds of policy share one interface:

- **adaptive** — a bandit from ``selector`` (linucb, thompson, mulinucb, epsilon-greedy, and
  their ``discounted-`` forms) picks the arm from the request's context after arms the planner
  predicts cannot meet the budget are masked; the planner then places it on the cluster as
  it is now. ``random`` and ``fixed`` use the same path.
- **static baselines of the literature**, for the benchmark: ``local-only`` (the family's
  most accurate model on the entry node), ``full-offload`` (all of it on the strongest
  node), ``neurosurgeon`` (the best single split of the full model between the entry node and
  the strongest node, chosen once from offline profiles), ``edgent`` (the most accurate exit
  of the full model, and its best split, that the offline profiles say meets the deadline).
  Static means they never look at live load, heat or bandwidth: that is the point of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import msgspec
import numpy as np

from p2pinfer.errors import AccuracyUnavailable, BadMinAccuracy, BadRequest, NoFeasiblePlan, UnknownFamily
from p2pinfer.planning.latency_model import ComputeLatencyModel, PredictionResidual
from p2pinfer.planning.peer_directory import PeerDirectory, PeerView, StaticDirectory
from p2pinfer.planning.placement import (
    ArmKey,
    CodecPricing,
    build_problem,
    exit_plans,
    latencies_of,
    plan_segments,
    planner_segments,
)
from p2pinfer.planning.planner import ExitPlans, PlanningProblem, evaluate, plan, predict_exit_latencies
from p2pinfer.protocol.schema import InferRequest, PlanSegment
from p2pinfer.types import NodeId
from selector import (
    DIMENSION,
    AccuracyFloorError,
    Arm,
    CalibrationTable,
    ContextInputs,
    Policy,
    StatisticsDelta,
    SufficientStatistics,
    calibrated_accuracy,
    check_min_accuracy,
    encode,
    make_policy,
    plausible_arms,
    policy_names,
    qoe_reward,
    select_feasible_with_details,
    takes_seed,
    undominated_arms,
)
from selector.arm_features import ArmTraits
from selector.errors import SelectorError
from zoo.manifest import Manifest, VariantInfo

FEASIBILITY_MARGIN = 0.9
PRIOR_ACCURACY_SHARE = 0.625  # default QoE weights (1, 0.5, 0.1) as shares
PRIOR_LATENCY_COST = 0.15  # the latency share times a typical half-budget latency (arms no profile prices)
PRIOR_LATENCY_SHARE = 0.3125  # default QoE weights (1, 0.5, 0.1): the latency share
PRIOR_MISS_COST = 0.5  # an arm its unit's profile says cannot meet the budget starts this much lower
PRIOR_ORIGIN = "offline-prior"
LATENCY_CACHE_S = 0.02
DEGRADE_ACCURACY_SHARE = 0.9  # a degraded arm keeps this share of the best arm's accuracy
ENERGY_MS_PER_UNIT = 100.0
"""The QoE reward's energy proxy: a request's compute milliseconds over this (10 ms ≈ 0.1)."""
PLAUSIBLE_QOE_MARGIN = 0.05
"""Bandit policies choose among the arms whose predicted QoE (``ArmSelection.predicted_qoe``) is
within this of the best prediction (``selector.plausible_arms``): about the QoE of 3 ms on a
60 ms deadline at a latency weight of 1, or 10 points of accuracy at a weight of 0.5."""
UNPRUNED_POLICIES = frozenset({"fixed", "random"})  # their arm is the point: dominated arms stay
PRIOR_WEIGHT = 1.0  # pseudo-observations per arm: real observations outweigh it at once
LATENCY_CACHE_ENTRIES = 64  # (family, exchange rate, image) keys: client-chosen values, so bounded
RATE_STEPS_PER_OCTAVE = 4  # exchange rates are rounded to 2^(1/4) (19%) steps: a shared cache key
IMAGE_BYTES_STEP = 1024  # image sizes are priced to the KiB
DEFAULT_IMAGE_DECODE_MS = 20.0  # JPEG decode + resize + crop of a ~400x300 page, 224 px, this host
IMAGE_DECODE_SMOOTHING = 0.2

ImageInput = tuple[str, bytes]
"""A client's image as it came: (media type, JPEG/PNG bytes)."""


def rounded_rate(ms_per_accuracy: float) -> float:
    """The exchange rate on a geometric grid, so requests of similar users share cached prices."""
    if not math.isfinite(ms_per_accuracy) or ms_per_accuracy <= 0:
        return ms_per_accuracy
    return float(2.0 ** (round(math.log2(ms_per_accuracy) * RATE_STEPS_PER_OCTAVE) / RATE_STEPS_PER_OCTAVE))


def known_policies() -> list[str]:
    """Every ``--policy`` a node accepts: the selector's policies and the static baselines."""
    return sorted({*policy_names(), *STATIC_BASELINES} - {"fixed"}) + ["fixed"]


class Decision(msgspec.Struct, frozen=True, gc=False):
    """An arm and its placement for one request (a Struct: one is built per request, in C)."""

    arm: Arm
    segments: list[PlanSegment]
    predicted_ms: float
    context: np.ndarray | None
    forced: bool  # every arm was predicted infeasible: the cheapest one was taken
    route_overhead_ms: float = math.nan
    """The route overhead ``predicted_ms`` holds (a plan on one node; NaN: the current one), so
    that an answer's residual is taken against the parts priced then."""


@dataclass(frozen=True)
class NodeState:
    """What the entry node knows about itself and the cluster when a request arrives."""

    own_load: float = 0.0
    own_throttle: float = 0.0  # share of speed lost to heat
    peers_mean_load: float = 0.0
    peers_mean_throttle: float = 0.0
    best_link_bandwidth_mbps: float = 0.0
    best_link_rtt_ms: float = math.inf
    pressure_level: float = 0.0


def pricing_key(codecs: CodecPricing) -> tuple[object, ...]:
    """Everything that changes a ``CodecPricing``'s options, hashable (its maps are dicts)."""
    return (codecs.codecs, tuple(sorted(codecs.encode_ms_per_mb.items())),
            tuple(sorted(codecs.decode_ms_per_mb.items())), codecs.ms_per_accuracy, codecs.max_accuracy_drop,
            codecs.image)


@dataclass(frozen=True)
class _Predictions:
    """One planner pass over a family's variants (``ArmSelection._predictions``)."""

    at_s: float  # time.monotonic() when computed
    views: list[PeerView]  # the directory's views it was computed from
    plans: dict[str, ExitPlans]  # per variant: every exit's plan
    latencies: dict[ArmKey, float]  # per arm: its plan's predicted latency (inf: none)


class ArmSelection:
    def __init__(self, node_id: str, manifest: Manifest, directory: PeerDirectory, policy_name: str,
                 compute_model: ComputeLatencyModel | None = None, fixed_arm: Arm | None = None,
                 seed: int | None = None, codecs: CodecPricing | None = None) -> None:
        """``codecs``: how this node prices boundary codecs (its measured encode/decode costs);
        each request then gets its own exchange rate and image option (``pricing``). None: every
        hop travels float32 (the static baselines always do: they are the literature's)."""
        self.node_id = node_id
        self.codecs = codecs
        self.image_decode_ms = DEFAULT_IMAGE_DECODE_MS
        self.manifest = manifest
        self.directory = directory
        self.compute_model = compute_model
        self.policy_name = policy_name
        self.fixed_arm = fixed_arm
        self.policy: Policy | None = None
        self._static_plans: dict[tuple[str, int, frozenset[NodeId]], tuple[list[PlanSegment], float]] = {}
        self._primed: set[str] = set()
        self._featured: set[str] = set()
        self._latencies: dict[tuple[str, tuple[object, ...] | None], _Predictions] = {}  # (family, pricing)
        self._arms: dict[str, tuple[tuple[object, ...], tuple[Arm, ...]]] = {}  # family -> (hosting, arms)
        self._flops: dict[str, int] = {}  # arm key -> FLOPs of its blocks (``_arm_flops``)
        self._pricings: dict[tuple[float, tuple[str, int, float] | None], tuple[CodecPricing, CodecPricing]] = {}
        self._degrade_exits: dict[tuple[str, int, float | None], int] = {}  # earliest_degrade_exit's answers
        # a pinned arm's only placement, per (variant, exit, floor), for as long as the cluster view it came from
        self._pinned: dict[tuple[str, int | None, float | None], tuple[list[PeerView], Decision]] = {}
        self.residual = PredictionResidual()  # what the plans' predictions miss here (health shows it)
        self._prior_sequence = 0
        self._calibration: dict[tuple[str, int], tuple[CalibrationTable | None, float | None]] = {}  # (table, held-out)
        # fixed without an arm has no policy: it takes the most accurate arm, see decide()
        if policy_name not in STATIC_BASELINES and not (policy_name == "fixed" and fixed_arm is None):
            options: dict[str, object] = {"origin": node_id}
            try:
                if policy_name == "fixed":
                    options["arm"] = fixed_arm
                elif seed is not None and takes_seed(policy_name):
                    options["seed"] = seed
                self.policy = make_policy(policy_name, DIMENSION, **options)
            except SelectorError as error:
                raise BadRequest(f"policy {policy_name!r}: {error}; known: {known_policies()}") from None

    # ---- the cluster as arms -------------------------------------------------------------
    def variants(self, family: str) -> list[VariantInfo]:
        """Variants of ``family`` whose blocks [0, last exit] some alive node(s) can serve."""
        hosted: dict[str, set[int]] = {}
        for peer in self.directory.peers():
            if not peer.alive:
                continue
            for variant, (first, last) in peer.hosted.items():
                hosted.setdefault(variant, set()).update(range(first, last + 1))
        variants = [v for v in self.manifest.variants_of(family) if 0 in hosted.get(v.name, set())]
        if not variants:
            raise UnknownFamily(f"no alive node hosts family {family!r}")
        return variants

    def arms(self, family: str, deadline_ms: float | None = None, codecs: CodecPricing | None = None) -> list[Arm]:
        """The family's arms reachable now; new arms get their cold-start priors, priced
        against ``deadline_ms`` (the request that first sees them) when given, with that
        request's codec prices ``codecs`` (the ones its feasibility mask uses). The list is
        rebuilt only when some node's liveness or hosted blocks changed (``_hosting``)."""
        hosting = self._hosting()
        cached = self._arms.get(family)
        if cached is not None and cached[0] == hosting:
            arms = list(cached[1])
        else:
            arms = []
            for variant in self.variants(family):
                reachable = self._reachable(variant)
                arms += [Arm(variant.name, exit_block) for exit_block in variant.exit_blocks
                         if exit_block <= reachable]
            self._arms[family] = (hosting, tuple(arms))  # only families some node hosts get here
        self._give_arm_features(arms)
        self._seed_priors(arms, family, deadline_ms, codecs)
        return arms

    def _give_arm_features(self, arms: Sequence[Arm]) -> None:
        """Tell a policy that learns across arms (``adaptive-linucb``) what each new arm is:
        its compute relative to the family's costliest arm, its exit depth, its manifest
        accuracy — so an arm it has never played is predicted, not starved."""
        set_features = getattr(self.policy, "set_arm_features", None)
        fresh = [arm for arm in arms if arm.key not in self._featured]
        if set_features is None or not fresh:
            return

        compute = self._arm_flops
        costliest = max(compute(arm) for arm in arms) or 1
        deepest = max(arm.exit for arm in arms) or 1
        set_features({arm.key: ArmTraits(relative_cost=compute(arm) / costliest, exit_depth=arm.exit / deepest,
                                         accuracy_prior=self.manifest.variant(arm.variant).exit_accuracy(arm.exit)
                                         ).vector() for arm in fresh})
        self._featured.update(arm.key for arm in fresh)

    def _seed_priors(self, arms: Sequence[Arm], family: str | None = None, deadline_ms: float | None = None,
                     codecs: CodecPricing | None = None) -> None:
        """Start each new arm from what the manifest already says about it.

        A bandit knows nothing of an arm until it plays it, and plain UCB plays every arm once
        first — here that means answering real users with exits that are right 10% of the
        time. One pseudo-observation on the bias feature, worth the reward the arm's measured
        accuracy would earn at a typical latency, lets the policy start from the offline
        ranking and learn the context from there. It enters as merged statistics of its own
        origin, so it is never exported to other nodes as if it were learned.

        The latency part is per unit (issue 17): the planner's predicted latency of the arm,
        from the block profiles each node measured on the unit that would run the blocks (a
        GPU peer's own warm profile, gossiped), over the budget of the request that first sees
        the arm. A constant latency cost ranks by accuracy alone and lets an arm the CPU
        profiles call slow lose to a cheap one that a GPU makes no faster in practice.
        """
        if self.policy is None or self.policy_name in ("fixed", "random"):
            return
        fresh = [arm for arm in arms if arm.key not in self._primed]
        if not fresh:
            return
        bias = np.zeros(self.policy.dimension)
        bias[0] = 1.0
        statistics = {}
        latency = self._prior_latency(family, deadline_ms, codecs)
        for arm in fresh:
            accuracy = self.manifest.variant(arm.variant).exit_accuracy(arm.exit)
            reward = PRIOR_ACCURACY_SHARE * accuracy - latency(arm)
            statistics[arm.key] = SufficientStatistics(gram=PRIOR_WEIGHT * np.outer(bias, bias),
                                                       moment=PRIOR_WEIGHT * reward * bias, count=1)
            self._primed.add(arm.key)
        self._prior_sequence += 1
        self.policy.merge(StatisticsDelta(origin=PRIOR_ORIGIN, sequence=self._prior_sequence,
                                          dimension=self.policy.dimension, arms=statistics))

    def _prior_latency(self, family: str | None, deadline_ms: float | None,
                       codecs: CodecPricing | None = None) -> Callable[[Arm], float]:
        """An arm's latency cost for its prior: the QoE latency term of the latency predicted
        with ``codecs``, plus ``PRIOR_MISS_COST`` when that misses the budget; the constant
        without a budget."""
        if family is None or deadline_ms is None or not deadline_ms > 0:
            return lambda arm: PRIOR_LATENCY_COST
        try:
            predicted = self.predictor(family, codecs)
        except UnknownFamily:
            return lambda arm: PRIOR_LATENCY_COST

        def cost(arm: Arm) -> float:
            latency_ms = predicted(arm)
            if not math.isfinite(latency_ms):
                return PRIOR_LATENCY_COST
            late = latency_ms > deadline_ms * FEASIBILITY_MARGIN
            return PRIOR_LATENCY_SHARE * min(latency_ms / deadline_ms, 1.0) + (PRIOR_MISS_COST if late else 0.0)

        return cost

    def _arm_flops(self, arm: Arm) -> int:
        """FLOPs of the arm's blocks (the reward's energy term grows with them); from the
        manifest, which does not change, so summed once per arm (every decision asks)."""
        flops = self._flops.get(arm.key)
        if flops is None:
            variant = self.manifest.variant(arm.variant)
            flops = self._flops[arm.key] = sum(block.flops for block in variant.blocks[:arm.exit + 1])
        return flops

    def _hosting(self) -> tuple[tuple[str, bool, tuple[tuple[str, tuple[int, int]], ...]], ...]:
        """What the arms depend on: every node's liveness and hosted block ranges."""
        return tuple((view.node_id, view.alive, tuple(view.hosted.items())) for view in self.directory.peers())

    def _reachable(self, variant: VariantInfo) -> int:
        covered: set[int] = set()
        for peer in self.directory.peers():
            if peer.alive and variant.name in peer.hosted:
                first, last = peer.hosted[variant.name]
                covered.update(range(first, last + 1))
        block = -1
        while block + 1 in covered:
            block += 1
        return block

    def strongest(self, variant: VariantInfo) -> PeerView:
        """The node that runs the whole variant fastest by its offline profile."""
        candidates = [peer for peer in self.directory.peers()
                      if peer.alive and peer.hosts(variant.name, 0, variant.block_count - 1)]
        if not candidates:
            raise NoFeasiblePlan(f"no alive node hosts all of {variant.name}")
        return min(candidates, key=lambda peer: sum(peer.block_ms.get(variant.name, [math.inf])))

    # ---- accuracy: the floor a request sets, and the reward's accuracy term ------------------
    def arm_accuracy(self, arm: Arm) -> float:
        """The arm's held-out accuracy (manifest): what ``min_accuracy`` is compared with."""
        return self.manifest.variant(arm.variant).exit_accuracy(arm.exit)

    def predicted_qoe(self, request: InferRequest, predictor: Callable[[Arm], float],
                      floor: float | None = None) -> Callable[[Arm], float]:
        """Each arm's QoE as the node predicts it for ``request``: the reward's own formula
        (``selector.qoe_reward``, the user's weights and deadline) at the planner's predicted
        latency, the arm's held-out accuracy and, for energy, the predicted latency as if it were
        all compute (an upper bound). ``-inf`` for an arm predicted late (with the feasibility
        margin) or below ``floor``: the masks rule it out, the prediction says nothing more."""
        def predicted(arm: Arm) -> float:
            latency_ms = predictor(arm)
            accuracy = self.arm_accuracy(arm)
            if (not math.isfinite(latency_ms) or latency_ms > request.deadline_ms * FEASIBILITY_MARGIN
                    or (floor is not None and accuracy < floor)):
                return -math.inf
            return qoe_reward(request.qoe, accuracy, latency_ms, request.deadline_ms, True,
                              energy=latency_ms / ENERGY_MS_PER_UNIT)

        return predicted

    def answer_accuracy(self, variant: str, exit_block: int, confidence: float) -> float:
        """The QoE reward's accuracy term for an answer from ``exit_block`` of ``variant`` given with
        ``confidence`` (max softmax): the exit's calibration table (``benchmarks.calibration``),
        or the exit's held-out accuracy when the manifest has no table, never the raw confidence."""
        key = (variant, exit_block)
        known = self._calibration.get(key)
        if known is None:  # the manifest is read once per (variant, exit), not per answer
            exit_info = next((e for e in self.manifest.variant(variant).exits if e.block == exit_block), None)
            stored = exit_info.calibration if exit_info is not None else None
            known = self._calibration[key] = (
                CalibrationTable(tuple(stored.confidence), tuple(stored.accuracy)) if stored is not None else None,
                exit_info.accuracy if exit_info is not None else None)
        return calibrated_accuracy(known[0], confidence, fallback=known[1])

    @staticmethod
    def min_accuracy(request: InferRequest) -> float | None:
        """The request's accuracy floor, checked: finite and in [0, 1], or ``BadMinAccuracy``."""
        if request.min_accuracy is None:
            return None
        try:
            return check_min_accuracy(request.min_accuracy)
        except SelectorError as error:
            raise BadMinAccuracy(str(error)) from None

    def _honour_floor(self, decision: Decision, floor: float | None) -> Decision:
        """A pinned or static-baseline arm below the request's floor is refused, not served."""
        accuracy = self.arm_accuracy(decision.arm)
        if floor is not None and accuracy < floor:
            raise AccuracyUnavailable(f"{decision.arm.key} offers accuracy {accuracy:.4f}, below the request's "
                                      f"min_accuracy {floor}")
        return decision

    def _accurate_enough(self, arms: Sequence[Arm], floor: float | None) -> list[Arm]:
        if floor is None:
            return list(arms)
        good = [arm for arm in arms if self.arm_accuracy(arm) >= floor]
        if not good:
            best = max((self.arm_accuracy(arm) for arm in arms), default=float("nan"))
            raise AccuracyUnavailable(f"no arm reaches min_accuracy {floor}; the most accurate offers {best:.4f}")
        return good

    # ---- context -------------------------------------------------------------------------
    @staticmethod
    def context(request: InferRequest, input_bytes: int, state: NodeState) -> np.ndarray:
        weights = request.qoe
        return encode(ContextInputs(
            budget_ms=request.deadline_ms, input_bytes=input_bytes, own_load=state.own_load,
            own_throttle=state.own_throttle, best_link_bandwidth_mbps=state.best_link_bandwidth_mbps,
            best_link_rtt_ms=state.best_link_rtt_ms, peers_mean_load=state.peers_mean_load,
            peers_mean_throttle=state.peers_mean_throttle, weights=weights, pressure_level=state.pressure_level))

    def observe_latency(self, decision: Decision, measured_ms: float, parts_ms: float | None = None) -> None:
        """An answered (or deadline-refused) request of a placed arm: how far its plan's
        prediction was from what it took (``PredictionResidual``). ``parts_ms``: for an answer,
        the measured queue, compute and transfer of its segments — what it took beyond them is
        the entry's overhead (``ComputeLatencyModel.entry_overhead_ms``)."""
        if not math.isfinite(decision.predicted_ms):
            return
        self.residual.observe(decision.predicted_ms, measured_ms)
        if self.compute_model is None:
            return
        nodes = {segment.node for segment in decision.segments}
        if len(nodes) == 1:  # a route on one node: its own bias
            node = NodeId(next(iter(nodes)))
            priced = decision.route_overhead_ms
            predicted_parts_ms = decision.predicted_ms - (
                priced if math.isfinite(priced) else self.compute_model.route_overhead_ms(node))
            self.compute_model.observe_route(
                node, measured_ms - predicted_parts_ms - self.compute_model.entry_overhead_ms(node))
        if parts_ms is not None and math.isfinite(parts_ms) and nodes:
            where = self.node_id if nodes == {self.node_id} else next(iter(nodes - {self.node_id}))
            self.compute_model.observe_entry_overhead(where, measured_ms - parts_ms)

    # ---- codecs --------------------------------------------------------------------------
    def observe_image_decode(self, milliseconds: float) -> None:
        """A measured decode + preprocessing of a client's image (the entry decodes every one):
        what a peer that receives the image instead of the tensor will pay again."""
        if math.isfinite(milliseconds) and milliseconds >= 0:
            self.image_decode_ms += IMAGE_DECODE_SMOOTHING * (milliseconds - self.image_decode_ms)

    def pricing(self, request: InferRequest, image: ImageInput | None = None) -> CodecPricing | None:
        """This request's codec prices: the node's measured codec costs, the accuracy exchange
        rate of the user's QoE weights and deadline (rounded, see ``rounded_rate``), and the
        client's image as a way for the input to travel."""
        if self.codecs is None:
            return None
        accuracy, latency, _ = request.qoe.shares()
        rate = rounded_rate(CodecPricing.ms_per_accuracy_of(accuracy, latency, request.deadline_ms))
        option = None
        if image is not None:
            size = max(IMAGE_BYTES_STEP, round(len(image[1]) / IMAGE_BYTES_STEP) * IMAGE_BYTES_STEP)
            option = (image[0], size, float(round(self.image_decode_ms)))
        # the same instance for the same prices: it keeps its codec options priced (``options``)
        cached = self._pricings.get((rate, option))
        if cached is not None and cached[0] is self.codecs:
            return cached[1]
        if len(self._pricings) >= LATENCY_CACHE_ENTRIES:
            self._pricings.clear()
        priced = replace(self.codecs, ms_per_accuracy=rate, image=option)
        self._pricings[(rate, option)] = (self.codecs, priced)
        return priced

    # ---- decisions -----------------------------------------------------------------------
    def predictor(self, family: str, codecs: CodecPricing | None = None) -> Callable[[Arm], float]:
        """Predicted latency of every arm of ``family``, reused for ``LATENCY_CACHE_S``: under
        load many requests arrive within one gossip round, and the cluster view they would
        all recompute from is the same. Cached per (family, ``codecs``): requests with the same
        rounded exchange rate and image size share the prices, others get their own."""
        latencies = self._predictions(family, codecs).latencies
        return lambda arm: latencies.get((arm.variant, arm.exit), math.inf)

    def _predictions(self, family: str, codecs: CodecPricing | None) -> _Predictions:
        """``family``'s plans and latencies priced with ``codecs``: the cached ones while they
        are fresh (see ``_fresh_predictions``), else computed now."""
        key = _prediction_key(family, codecs)
        cached = self._fresh_predictions(key)
        if cached is not None:
            return cached
        now = time.monotonic()
        if len(self._latencies) >= LATENCY_CACHE_ENTRIES:
            self._latencies = {k: v for k, v in self._latencies.items() if now - v.at_s <= LATENCY_CACHE_S}
            if len(self._latencies) >= LATENCY_CACHE_ENTRIES:
                self._latencies.clear()
        views = self.directory.peers()
        variants = self.variants(family)
        plans = exit_plans(self.directory, self.compute_model, variants, codecs=codecs)
        computed = _Predictions(now, views, plans, latencies_of(plans, variants))
        self._latencies[key] = computed
        return computed

    def _fresh_predictions(self, key: tuple[str, tuple[object, ...] | None]) -> _Predictions | None:
        """The cached predictions under ``key`` ((family, ``pricing_key``)) if at most ``LATENCY_CACHE_S`` old
        and the directory's views are still the same (a failed hop or a peer's push-back changes
        them at once), else None."""
        cached = self._latencies.get(key)
        if cached is None or time.monotonic() - cached.at_s > LATENCY_CACHE_S:
            return None
        views = self.directory.peers()
        return cached if cached.views is views or cached.views == views else None

    def place(self, arm: Arm, exclude: Sequence[str] = (), codecs: CodecPricing | None = None, *,
              likeliest: bool = False) -> tuple[list[PlanSegment], float]:
        """The arm's best plan and its predicted latency (blocks at their p90s).

        Without ``exclude``, and when the feasibility mask has just priced the family, the plan
        comes from that same planner pass (``_fresh_predictions``): the arm the mask let
        through is placed as it was priced, and no second problem is built. (A pinned arm,
        which no mask priced, gets one problem of its own.)

        ``likeliest``: for an arm no plan is predicted to serve in time (a forced decision),
        the plan with the best *mean* instead — the one most likely to make it anyway. At
        p90s, a route with a steady, certainly-late time (an emulated Pi's 60 ms for a robot
        that arrives there with 48 ms left) beats a noisy one whose mean fits (the edge over a
        jittery uplink: p90 87 ms, answered in 60): the heated Jetson's forced robot requests
        all went to the Pi, which refused every one of them."""
        variant = self.manifest.variant(arm.variant)

        def problem(tail: bool) -> PlanningProblem:
            return build_problem(self.directory, self.compute_model, variant, arm.exit, exclude=exclude,
                                 codecs=codecs, tail=tail)

        if not likeliest and not exclude:
            fresh = self._fresh_predictions(_prediction_key(variant.family, codecs))
            plans = None if fresh is None else fresh.plans.get(variant.name)
            if plans is not None and arm.exit <= plans.problem.exit_block:
                best = plans.plan(arm.exit)
                return plan_segments(best), best.total_ms
        at_tail = problem(tail=True)
        if not likeliest:
            best = plan(at_tail)
            return plan_segments(best), best.total_ms
        segments = plan_segments(plan(problem(tail=False)))
        return segments, evaluate(at_tail, planner_segments(segments)).total_ms

    def decide(self, request: InferRequest, input_bytes: int, state: NodeState, degrade: bool = False,
               image: ImageInput | None = None) -> Decision:
        """``degrade``: the coordinator says this user is over its fair share (or the cluster
        is overloaded): serve the cheapest arm now instead of the policy's, so the load sheds
        early without refusing anyone. ``image``: the client's JPEG/PNG, when it sent one (the
        plan may forward it instead of the tensor).

        ``request.min_accuracy`` is a hard floor on the arm's held-out accuracy: arms below it
        are masked (with the deadline's mask), also when shedding; if no arm reaches it the
        request gets ``AccuracyUnavailable`` (422), never a less accurate answer."""
        floor = self.min_accuracy(request)
        if request.variant is not None and request.plan is None:
            only = self._pinned_only_placement(request.variant, request.exit, floor)
            if only is not None:
                return only
        codecs = self.pricing(request, image)
        if request.variant is not None:  # a pinned arm: the caller decides, the planner places
            variant = self.manifest.variant(request.variant)
            exit_block = request.exit if request.exit is not None else variant.exit_blocks[-1]
            if request.plan is not None:
                return self._honour_floor(Decision(Arm(variant.name, exit_block),
                                                   self._checked_plan(request.plan, exit_block),
                                                   math.nan, None, forced=False), floor)
            arm = self._honour_floor(Decision(Arm(variant.name, exit_block), [], math.nan, None, forced=False),
                                     floor).arm
            return self._only_placement(arm) or self._placed(arm, None, forced=False, codecs=codecs)
        if request.plan is not None:
            raise BadRequest("a pinned plan needs a pinned variant")
        if self.policy_name in STATIC_BASELINES:
            return self._honour_floor(self._static(request), floor)
        arms = self.arms(request.family, request.deadline_ms, codecs)
        if request.exit is not None:
            arms = [arm for arm in arms if arm.exit == request.exit] or arms
        context = self.context(request, input_bytes, state)
        if degrade:
            return self._placed(self.degraded_arm(self._accurate_enough(arms, floor),
                                                  self.predictor(request.family, codecs)),
                                None, forced=True, codecs=codecs)
        if self.policy is None:  # "fixed" with no arm: the most accurate arm
            arm = max(arms, key=lambda a: (self.manifest.variant(a.variant).exit_accuracy(a.exit), -a.exit))
            return self._placed(self._honour_floor(Decision(arm, [], math.nan, None, False), floor).arm, context,
                                forced=False, codecs=codecs)
        predictor = self.predictor(request.family, codecs)
        if self.policy_name not in UNPRUNED_POLICIES:
            arms = undominated_arms(arms, predictor, self.arm_accuracy, self._arm_flops)
            arms = plausible_arms(arms, self.predicted_qoe(request, predictor, floor), PLAUSIBLE_QOE_MARGIN)
        try:
            selection = select_feasible_with_details(self.policy, context, arms, predictor, request.deadline_ms,
                                                     margin=FEASIBILITY_MARGIN, accuracy_of=self.arm_accuracy,
                                                     min_accuracy=floor)
        except AccuracyFloorError as error:
            raise AccuracyUnavailable(str(error)) from None
        if self.policy_name == "fixed" and self.fixed_arm is not None and selection.arm != self.fixed_arm:
            # the configured arm is predicted late: a cheaper arm that keeps its accuracy, not
            # whatever the mask found feasible (digits-resnet's exit 0, right 1 time in 10)
            return self._placed(self.degraded_arm(self._accurate_enough(arms, floor), predictor),
                                None, forced=True, codecs=codecs)
        return self._placed(selection.arm, context, forced=selection.degraded, codecs=codecs,
                            likeliest=selection.degraded)

    def earliest_degrade_exit(self, arm: Arm, floor: float | None = None) -> int:
        """The earliest exit of the arm's variant a late request may still answer at: one that
        keeps ``DEGRADE_ACCURACY_SHARE`` of the arm's accuracy and the request's floor. A first
        exit right one time in three is a wrong answer sent fast; better a cheaper arm, or a
        429 the client can act on."""
        key = (arm.variant, arm.exit, floor)
        known = self._degrade_exits.get(key)
        if known is not None:  # the manifest's accuracies do not change: once per (arm, floor)
            return known
        variant = self.manifest.variant(arm.variant)
        needed = max(DEGRADE_ACCURACY_SHARE * variant.exit_accuracy(arm.exit), floor or 0.0)
        good = [block for block in variant.exit_blocks if block <= arm.exit and variant.exit_accuracy(block) >= needed]
        if len(self._degrade_exits) >= LATENCY_CACHE_ENTRIES:  # floors are client-chosen: bounded
            self._degrade_exits.clear()
        earliest = self._degrade_exits[key] = min(good, default=arm.exit)
        return earliest

    def degraded_arm(self, arms: Sequence[Arm], predictor: Callable[[Arm], float]) -> Arm:
        """The arm a shed request gets: the cheapest (predicted fastest) one that keeps
        ``DEGRADE_ACCURACY_SHARE`` of the best arm's manifest accuracy. The cheapest arm of all
        is often a first exit that is right one time in ten: an answer nobody can use is not
        a cheaper answer, so when no such arm is predicted in time the least late of them is
        taken (the deadline is best effort then), never a less accurate one. (Falling back to
        the cheapest of all answered overloaded requests from digits-resnet's exit 0.)"""
        accuracy = {arm.key: self.manifest.variant(arm.variant).exit_accuracy(arm.exit) for arm in arms}
        floor = DEGRADE_ACCURACY_SHARE * max(accuracy.values())
        good = [arm for arm in arms if accuracy[arm.key] >= floor]
        timely = [arm for arm in good if math.isfinite(predictor(arm))]
        return min(timely or good or arms, key=lambda arm: (predictor(arm), -accuracy[arm.key]))

    def _checked_plan(self, segments: list[PlanSegment], exit_block: int) -> list[PlanSegment]:
        """A pinned plan must cover blocks [0, exit] in order, on nodes this node knows."""
        known = {peer.node_id for peer in self.directory.peers()}
        expected = 0
        for segment in segments:
            if segment.node not in known:
                raise BadRequest(f"pinned plan names unknown node {segment.node!r}; known: {sorted(known)}")
            if segment.first_block != expected or segment.last_block < segment.first_block:
                raise BadRequest(f"pinned plan must cover blocks [0, {exit_block}] in order; "
                                 f"segment {segment.first_block}-{segment.last_block} does not follow {expected - 1}")
            expected = segment.last_block + 1
        if expected != exit_block + 1:
            raise BadRequest(f"pinned plan ends at block {expected - 1}, the exit is block {exit_block}")
        return list(segments)

    def _pinned_only_placement(self, variant_name: str, exit_block: int | None,
                               floor: float | None) -> Decision | None:
        """``_only_placement`` of a pinned arm, decided once per cluster view (the directory
        rebuilds its views every ``PEERS_CACHE_S`` or when a member joins): requests pinned to
        the same arm in between get the same decision, its prediction as fresh as the view."""
        views = self.directory.peers()
        key = (variant_name, exit_block, floor)
        cached = self._pinned.get(key)
        if cached is not None and cached[0] is views:
            return cached[1]
        variant = self.manifest.variant(variant_name)
        arm = Arm(variant.name, exit_block if exit_block is not None else variant.exit_blocks[-1])
        self._honour_floor(Decision(arm, [], math.nan, None, forced=False), floor)
        decision = self._only_placement(arm, views)
        if decision is not None:
            if len(self._pinned) >= LATENCY_CACHE_ENTRIES:
                self._pinned.clear()
            self._pinned[key] = (views, decision)
        return decision

    def _only_placement(self, arm: Arm, views: list[PeerView] | None = None) -> Decision | None:
        """A pinned arm with exactly one possible placement needs no planner: this node alone,
        with one compute unit, is the only live node hosting the variant and holds blocks
        [0, exit]. (The planner would search the same single path on every request.)"""
        views = self.directory.peers() if views is None else views
        holders = [view for view in views if view.alive and arm.variant in view.hosted]
        if len(holders) != 1 or holders[0].node_id != self.node_id or len(holders[0].units) != 1:
            return None
        own = holders[0]
        first, last = own.hosted[arm.variant]
        if first != 0 or last < arm.exit:
            return None
        overhead = self.compute_model.route_overhead_ms(own.node_id) if self.compute_model is not None else 0.0
        predicted = own.queue_ms + overhead + sum(own.block_ms.get(arm.variant, [])[:arm.exit + 1]) * own.slowdown
        segment = PlanSegment(node=self.node_id, unit=own.units[0], first_block=0, last_block=arm.exit)
        return Decision(arm, [segment], predicted, None, forced=False, route_overhead_ms=overhead)

    def _placed(self, arm: Arm, context: np.ndarray | None, forced: bool,
                codecs: CodecPricing | None = None, likeliest: bool = False) -> Decision:
        segments, predicted = self.place(arm, codecs=codecs, likeliest=likeliest)
        nodes = {segment.node for segment in segments}
        overhead = self.compute_model.route_overhead_ms(next(iter(nodes))) \
            if self.compute_model is not None and len(nodes) == 1 else math.nan
        return Decision(arm, segments, predicted, context, forced, route_overhead_ms=overhead)

    def _static(self, request: InferRequest) -> Decision:
        return STATIC_BASELINES[self.policy_name](self, request)

    def _most_accurate(self, variants: Sequence[VariantInfo]) -> VariantInfo:
        return max(variants, key=lambda v: (v.exits[-1].accuracy, v.flops_total))

    def _local_only(self, request: InferRequest) -> Decision:
        """The family's most accurate complete variant, on the entry node alone."""
        local = [v for v in self.variants(request.family) if self._self_view().hosts(v.name, 0, v.exit_blocks[-1])]
        if not local:
            raise NoFeasiblePlan(f"local-only: this node hosts no complete variant of {request.family}")
        full = self._most_accurate(local)
        return self._static_decision(full, full.exit_blocks[-1], [self.node_id])

    def _full_offload(self, request: InferRequest) -> Decision:
        """The most accurate model, all of it on the strongest node."""
        full = self._most_accurate(self.variants(request.family))
        return self._static_decision(full, full.exit_blocks[-1], [self.strongest(full).node_id])

    def _neurosurgeon(self, request: InferRequest) -> Decision:
        """The best single split of the full model between the entry and the strongest node."""
        full = self._most_accurate(self.variants(request.family))
        nodes = sorted({self.node_id, self.strongest(full).node_id})
        return self._static_decision(full, full.exit_blocks[-1], nodes)

    def _edgent(self, request: InferRequest) -> Decision:
        """The most accurate exit whose offline-predicted best split meets the deadline."""
        full = self._most_accurate(self.variants(request.family))
        nodes = sorted({self.node_id, self.strongest(full).node_id})
        latencies = self._static_exit_latencies(full, nodes)
        feasible = [e for e in full.exit_blocks if latencies[e] <= request.deadline_ms * FEASIBILITY_MARGIN]
        chosen = max(feasible, key=full.exit_accuracy) if feasible else min(full.exit_blocks,
                                                                             key=lambda e: latencies[e])
        return self._static_decision(full, chosen, nodes, forced=not feasible)

    def _self_view(self) -> PeerView:
        return next(peer for peer in self.directory.peers() if peer.node_id == self.node_id)

    def _offline_directory(self, nodes: Sequence[str]) -> StaticDirectory:
        """The cluster as offline profiles see it: no load, no heat, links as first measured.
        Only ``nodes`` may compute; the entry node is always there (it holds the input and
        receives the answer) even when it may not compute (full offload)."""
        views = []
        for peer in self.directory.peers():
            if peer.node_id in nodes or peer.node_id == self.node_id:
                computes = peer.node_id in nodes
                views.append(PeerView(node_id=peer.node_id, url=peer.url, alive=True,
                                      hosted=dict(peer.hosted) if computes else {},
                                      block_ms={k: list(v) for k, v in peer.block_ms.items()} if computes else {},
                                      units=peer.units))
        directory = StaticDirectory(self.node_id, views)
        members = {view.node_id for view in views}
        for source in members:
            for destination in members:
                if source != destination:
                    directory.set_link(source, destination, self.directory.link(source, destination))
        return directory

    def _static_exit_latencies(self, variant: VariantInfo, nodes: Sequence[str]) -> dict[int, float]:
        problem = build_problem(self._offline_directory(nodes), None, variant, variant.exit_blocks[-1])
        per_block = predict_exit_latencies(problem)
        return {exit_block: per_block[exit_block] for exit_block in variant.exit_blocks}

    def _static_decision(self, variant: VariantInfo, exit_block: int, nodes: Sequence[str],
                         forced: bool = False) -> Decision:
        alive = frozenset(peer.node_id for peer in self.directory.peers() if peer.alive)
        key = (variant.name, exit_block, alive)
        if key not in self._static_plans:  # chosen from offline profiles, kept while membership stays
            best = plan(build_problem(self._offline_directory(nodes), None, variant, exit_block))
            self._static_plans[key] = (plan_segments(best), best.total_ms)
        segments, predicted = self._static_plans[key]
        return Decision(Arm(variant.name, exit_block), segments, predicted, None, forced)


def _prediction_key(family: str, codecs: CodecPricing | None) -> tuple[str, tuple[object, ...] | None]:
    """What cached predictions are kept under: the family and its codec prices."""
    return family, None if codecs is None else pricing_key(codecs)


STATIC_BASELINES: dict[str, Callable[[ArmSelection, InferRequest], Decision]] = {
    "local-only": ArmSelection._local_only,
    "full-offload": ArmSelection._full_offload,
    "neurosurgeon": ArmSelection._neurosurgeon,
    "edgent": ArmSelection._edgent,
}
"""The static baselines of the literature by name: each a decision from offline profiles."""
