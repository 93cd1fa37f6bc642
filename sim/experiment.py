"""One simulation run, from a validated config to per-round metrics: the one pipeline of every protocol.

:func:`plan` checks everything that can be checked without training (names, graph, roles, the protocol's
parameters, the rule's tolerance at the inputs it will see) and fixes the roles of the nodes; :func:`run`
builds every node through the protocol's registry entry (:mod:`phalanx.gossip.registry`), wires attackers,
faults and churn into the engine, attaches the metrics observer the protocol's reporting style needs, and
returns the metrics rows.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch

from phalanx.gossip import registry
from phalanx.gossip.aggregator import Combiner, gossip_rule_names, rule_names
from phalanx.gossip.byzantine import HonestView, attack_names
from phalanx.gossip.events import PeerId
from phalanx.gossip.identity import sim_keyring
from phalanx.gossip.messages import ModelUpdate
from phalanx.gossip.protocol import Protocol
from phalanx.gossip.spec import AttackSpec, NodeContext, ProtocolSpec, WorldDefaults
from phalanx.node.datasets import Dataset, load_dataset
from phalanx.node.device import resolve_device
from phalanx.node.learner import TrainConfig, Trainer, build_loss, derive_seed
from phalanx.node.models import check_model
from phalanx.node.partition import parse_partition
from phalanx.node.transfer import Features, check_features, partition_for
from phalanx.sim.churn import ChurnError, Trace
from phalanx.sim.config import ConfigError, SimConfig, settings_errors
from phalanx.sim.engine import Engine
from phalanx.sim.faults import FaultSchedule, churn_trace, late_nodes
from phalanx.sim.metrics import Metrics
from phalanx.sim.mixing import mixing_matrix, neighbour_weights, spectral_gap
from phalanx.sim.network import network_for
from phalanx.sim.topology import build_graph, is_time_varying
from phalanx.sim.topology import parse as parse_topology

BEHAVIOUR_OF = {
    "dissensus": "dissensus",
    "equivocation": "equivocation",
    "silent": "silent",
    "label-flip": "label-flip",
}


def world_defaults(config: SimConfig) -> WorldDefaults:
    """What the simulator tells a protocol about its world: timeouts derived from the virtual network."""
    return WorldDefaults(
        ping_timeout=max(0.05, 5 * config.latency),
        progress_timeout=config.round_timeout + 2 * config.local_steps * config.step_time,
        max_sample=config.nodes - 1,
    )


def protocol_of(config: SimConfig) -> tuple[ProtocolSpec, Any]:
    """The protocol's registry entry and its config for this run; one ConfigError line on a bad setting."""
    with settings_errors():
        spec = registry.get(config.protocol)
        return spec, spec.config(config, world_defaults(config))


@dataclass(slots=True, kw_only=True)
class Plan:
    """A checked run: the graph, who is Byzantine, who crashes, who straggles, the data shards."""

    config: SimConfig
    graph: nx.Graph
    weights: dict[int, dict[int, float]]
    spectral_gap: float
    byzantine: frozenset[int]
    crashed: tuple[int, ...]
    stragglers: frozenset[int]
    dataset: Dataset
    shards: list[np.ndarray]
    eval_nodes: tuple[int, ...]
    protocol: ProtocolSpec
    protocol_config: Any  # what the protocol's spec made of the settings (its ``configure``)
    churn: Trace = field(default_factory=dict)
    features: Features | None = None  # the frozen part under --train-only head (phalanx.node.transfer)
    # in-memory objects from the Python API (phalanx.api), used instead of config.model / config.loss_fn
    # (the config then holds their descriptions): a model factory and a loss callable
    model: Callable[..., Any] | None = None
    loss_fn: Callable[..., Any] | None = None

    @property
    def honest(self) -> list[int]:
        return [i for i in range(self.config.nodes) if i not in self.byzantine]


def _pick(rng: np.random.Generator, candidates: list[int], k: int) -> list[int]:
    return sorted(int(i) for i in rng.choice(candidates, size=min(k, len(candidates)), replace=False))


def _by_degree(graph: nx.Graph, candidates: list[int]) -> list[int]:
    return sorted(candidates, key=lambda i: (-graph.degree[i], i))


def place_byzantine(config: SimConfig, graph: nx.Graph, rng: np.random.Generator) -> frozenset[int]:
    k = config.num_byzantine
    if config.byzantine_nodes:
        return frozenset(config.byzantine_nodes)
    if k == 0:
        return frozenset()
    nodes = list(range(config.nodes))
    if config.byzantine_placement == "hubs":
        return frozenset(_by_degree(graph, nodes)[:k])
    if config.byzantine_placement == "target":
        order = [v for v in nx.bfs_tree(graph, config.byzantine_target) if v != config.byzantine_target]
        return frozenset(order[:k])
    return frozenset(_pick(rng, nodes, k))


def place_crashes(
    config: SimConfig,
    graph: nx.Graph,
    byzantine: frozenset[int],
    shards: list[np.ndarray],
    rng: np.random.Generator,
) -> tuple[int, ...]:
    """The honest nodes that crash: ``crash_nodes``, or ``crash_fraction`` of the honest nodes placed by
    ``crash_placement``. A placement that cannot be honoured is a :class:`ConfigError`."""
    if config.crash_nodes:
        return tuple(config.crash_nodes)
    honest = [i for i in range(config.nodes) if i not in byzantine]
    k = min(config.num_crashed, len(honest) - 1)
    if k <= 0:
        return ()
    if config.crash_placement == "hubs":
        return tuple(sorted(_by_degree(graph, honest)[:k]))
    if config.crash_placement in ("relays", "data"):
        # Relays hold no data; "data" crashes the nodes with the most data first.
        sizes = {i: len(shards[i]) for i in honest}
        if config.crash_placement == "relays":
            relays = [i for i in honest if sizes[i] == 0]
            if len(relays) < k:
                raise ConfigError(
                    f"crash_placement relays needs {k} honest nodes without data, but partition "
                    f"{config.partition!r} leaves {len(relays)}; give nodes no data with "
                    "partition = 'iid:relays=FRACTION' (or a small dirichlet alpha)"
                )
            return tuple(_pick(rng, relays, k))
        # Shards within one sample of each other (an IID split's) count as equal, and equal ones are
        # ordered by a seeded draw, not by id: low ids are often the hubs (Barabasi-Albert).
        level, top = {}, None
        for size in sorted(set(sizes.values()), reverse=True):
            if top is None or size < top - 1:
                top = size
            level[size] = -top
        ties = np.random.default_rng(derive_seed(config.seed, "crash-ties")).permutation(config.nodes)
        return tuple(sorted(sorted(honest, key=lambda i: (level[sizes[i]], int(ties[i])))[:k]))
    return tuple(_pick(rng, honest, k))


def check_rule(
    config: SimConfig,
    graph: nx.Graph,
    byzantine: frozenset[int],
    spec: ProtocolSpec | None = None,
    protocol_config: Any = None,
) -> None:
    """Run the rule once on zero vectors of every number of inputs it will see (what the protocol's
    ``rule_inputs`` says for every honest degree): a rule that cannot tolerate its ``f`` fails here, before
    training, instead of in round 0. A protocol that applies no rule refuses any rule but ``mean``."""
    if config.rule not in rule_names():
        raise ConfigError(f"unknown rule {config.rule!r}; choose one of: {', '.join(rule_names())}")
    if config.rule == "mean":
        from phalanx.gossip.aggregator import GENERIC_PARAMS

        extra = sorted(set(config.rule_params) - GENERIC_PARAMS)
        if extra:
            raise ConfigError(f"rule mean (D-PSGD mixing) takes no parameter; got {', '.join(extra)}")
    if spec is None:
        spec, protocol_config = protocol_of(config)
    own_row = spec.own_row
    combiner = Combiner(config.rule, config.rule_params, include_own=config.include_own and own_row)
    gossip = config.rule in gossip_rule_names()
    if gossip and not own_row and config.rule != "mean":
        raise ConfigError(
            f"rule {config.rule} needs the node's own model, which {spec.name}'s rule does not see; "
            "choose a rule that combines received models alone"
        )
    inputs = {spec.rule_inputs(protocol_config, graph.degree[i]) for i in graph if i not in byzantine}
    if None in inputs:
        if config.rule != "mean" or config.rule_params:
            raise ConfigError(f"protocol {spec.name} applies no aggregation rule; leave rule = mean")
        return
    degrees = sorted(int(n) for n in inputs if n is not None)
    with_own = config.include_own and own_row
    f = combiner.params.get("f")
    try:
        from phalanx.aggregation.validation import REQUIREMENTS, requirement
    except ImportError:  # pragma: no cover
        REQUIREMENTS, requirement = {}, None
    if isinstance(f, int) and requirement is not None and config.rule in REQUIREMENTS:
        for deg in degrees:
            try:
                requirement(config.rule, deg if gossip or not with_own else deg + 1, f)
            except ValueError as exc:
                where = (
                    f"a node of degree {deg} in {config.topology}"
                    if spec.rule_inputs(protocol_config, 1) != spec.rule_inputs(protocol_config, 2)
                    else f"{deg} received {spec.name} models"
                )
                raise ConfigError(f"rule {config.rule} cannot tolerate f={f} at {where}: {exc}") from None
    for deg in degrees:
        try:
            combiner.trial(deg)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"rule {config.rule} with {combiner.params} cannot run at a node of degree {deg} "
                f"({deg + int(with_own)} inputs): {exc}".splitlines()[0]
            ) from None


def plan(
    config: SimConfig,
    *,
    model: Callable[..., Any] | None = None,
    dataset: Dataset | None = None,
    loss_fn: Callable[..., Any] | None = None,
) -> Plan:
    """Check the config and fix every random choice that does not need training. ``model``, ``dataset``
    and ``loss_fn``, when given (the Python API's in-memory objects), stand in for the config's specs."""
    spec, protocol_config = protocol_of(config)  # unknown protocols and protocol params refused here
    try:
        build_loss(loss_fn or TrainConfig.from_settings(config).loss_fn)  # optimiser settings, buffers, loss
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    resolve_device(config.device)  # a device this machine lacks: one line, before any data loads
    if model is None:
        check_model(config.model)  # a built-in name or a module:attr factory that resolves
    attacks = attack_names()
    from phalanx.aggregation import ATTACK_PARAMS

    for name in ({config.attack} if config.num_byzantine else set()) | set(config.attacks.values()):
        if name not in attacks:
            raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(attacks)}")
        # an attack given a parameter it does not take would fail at every send and quietly stay honest
        takes = ATTACK_PARAMS.get(name)
        unknown = sorted(set(config.attack_params) - takes) if takes is not None else []
        if unknown and name not in BEHAVIOUR_OF:
            raise ConfigError(
                f"attack {name} takes no parameter {', '.join(unknown)}; it takes: {', '.join(sorted(takes or ())) or 'none'}"
            )
    parse_partition(config.partition)
    rng = np.random.default_rng(derive_seed(config.seed, "plan"))
    graph = build_graph(config.topology, config.nodes, seed=config.seed)
    weights = neighbour_weights(graph, config.mixing)
    gap = spectral_gap(mixing_matrix(graph, config.mixing)) if config.nodes <= 2000 else float("nan")
    byzantine = place_byzantine(config, graph, rng)
    if len(byzantine) >= config.nodes:
        raise ConfigError("every node would be Byzantine")
    check_rule(config, graph, byzantine, spec, protocol_config)
    dataset = dataset if dataset is not None else load_dataset(config.dataset)
    features = check_features(config, dataset)  # the samples the frozen part was pretrained on stay out
    shards = partition_for(
        dataset,
        config.nodes,
        config.partition,
        seed=config.seed,
        excluded=features.excluded if features else None,
    )
    crashed = place_crashes(config, graph, byzantine, shards, rng)
    honest = [i for i in range(config.nodes) if i not in byzantine]
    stragglers = frozenset(_pick(rng, honest, round(config.straggler_fraction * len(honest))))
    eval_nodes = tuple(honest) if not config.eval_nodes else tuple(_pick(rng, honest, config.eval_nodes))
    if spec.report == "sampled":
        eval_nodes = tuple(honest)  # any honest node may be sampled; eval_nodes caps how many are evaluated
    try:
        churn = churn_trace(config, derive_seed(config.seed, "churn"))
    except ChurnError as exc:
        raise ConfigError(str(exc)) from None
    return Plan(
        config=config,
        graph=graph,
        weights=weights,
        spectral_gap=gap,
        byzantine=byzantine,
        crashed=crashed,
        stragglers=stragglers,
        dataset=dataset,
        shards=shards,
        eval_nodes=eval_nodes,
        protocol=spec,
        protocol_config=protocol_config,
        churn=churn,
        features=features,
        model=model,
        loss_fn=loss_fn,
    )


@dataclass(slots=True)
class Result:
    plan: Plan
    rows: list[dict[str, Any]]
    crashed_ids: set[int] = field(default_factory=set)
    wall_time: float = 0.0
    engine_stats: dict[str, Any] = field(default_factory=dict)
    protocols: dict[PeerId, Protocol] = field(default_factory=dict)  # every node's protocol, after the run
    nodes: list[dict[str, Any]] = field(default_factory=list)  # per honest node, after the run (nodes.jsonl)
    faults: list[tuple[int, str, str]] = field(default_factory=list)  # (round, event, node) as they fired


def _omniscient_hook(
    holder: dict[str, Engine],
    plan: Plan,
    byz: frozenset[PeerId],
    weights_at: Callable[[int], Mapping[int, Mapping[int, float]]] | None = None,
) -> Callable[[PeerId, int, int], HonestView | None]:
    """What an omniscient attacker sees of ``target`` in a round: the target's and its honest neighbours'
    vectors of that round and step, with the target's mixing weights of that round (``weights_at`` for a
    time-varying graph, else the plan's)."""

    def hook(target: PeerId, round_: int, step: int) -> HonestView | None:
        outbox = holder["engine"].outbox

        def vector(node: PeerId) -> torch.Tensor | None:
            msg = outbox.get(node)
            if isinstance(msg, ModelUpdate) and msg.round == round_ and msg.step == step:
                return msg.params
            return None

        row = (weights_at(round_) if weights_at else plan.weights)[int(target)]
        vecs, ws, byz_w, byz_n = [], [], 0.0, 0
        for j, w in row.items():
            if str(j) in byz:
                byz_w += w
                byz_n += 1
                continue
            v = vector(str(j))
            if v is not None:
                vecs.append(v)
                ws.append(w)
        own = vector(target)
        if own is None and not vecs:
            return None
        some = own if own is not None else vecs[0]
        dim, device = some.numel(), some.device  # the model's, for an empty stack
        return HonestView(
            own=own,
            neighbours=torch.stack(vecs) if vecs else torch.zeros((0, dim), device=device),
            weights=torch.tensor(ws, dtype=torch.float32, device=device),
            byzantine_weight=byz_w,
            byzantine=byz_n,
        )

    return hook


def run(
    plan: Plan,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Result:
    """Simulate the planned run; ``progress`` is called with each finished round's metrics row."""
    threads = torch.get_num_threads()
    torch.set_num_threads(plan.config.threads)
    try:
        return _run(plan, progress)
    finally:
        torch.set_num_threads(threads)


def _run(plan: Plan, progress: Callable[[dict[str, Any]], None] | None) -> Result:
    config = plan.config
    start = time.perf_counter()
    device = resolve_device(config.device)
    train_config = TrainConfig.from_settings(config)
    if plan.loss_fn is not None:  # an in-memory loss (the Python API); the config holds its description
        train_config = dataclasses.replace(train_config, loss_fn=plan.loss_fn)
    model = plan.model if plan.model is not None else config.model
    trainer = Trainer(model, plan.dataset, train_config, init_seed=config.seed, device=device)
    from phalanx.sim.training import SimWorker

    byz = frozenset(str(i) for i in plan.byzantine)
    flipped = frozenset(n for n in byz if config.attack_of(int(n)) == "label-flip")
    worker = SimWorker(
        trainer,
        plan.dataset,
        plan.shards,
        seed=config.seed,
        step_time=config.step_time,
        slowdown={str(i): config.straggler_slowdown for i in plan.stragglers},
        flipped=flipped,
    )
    peers = tuple(str(i) for i in range(config.nodes))
    schedule_of, weights_at = _schedules(plan) if is_time_varying(config.topology) else (None, None)
    holder: dict[str, Engine] = {}
    hook = _omniscient_hook(holder, plan, byz, weights_at) if config.omniscient else None
    delay = min(config.round_timeout / 2, 2 * config.latency + 1e-3)
    spec, protocol_config = plan.protocol, plan.protocol_config
    late = late_nodes(plan.churn)
    # every simulated node has an ed25519 key (derived from the seed); one verifier, shared by all nodes,
    # checks each distinct signed record once
    signers, verifier = sim_keyring(peers, config.seed)
    protocols: dict[PeerId, Protocol] = {}
    for i in range(config.nodes):
        node = str(i)
        node_rng = np.random.default_rng(derive_seed(config.seed, "node", i))
        ctx = NodeContext(
            node=node,
            params=trainer.initial,
            neighbours=tuple(str(j) for j in plan.graph[i]),
            weights={str(j): w for j, w in plan.weights[i].items()},
            peers=peers,
            rng=node_rng,
            schedule=schedule_of(node) if schedule_of else None,
            include_own=config.include_own,
            late=node in late,
            signer=signers[node],
            verifier=verifier,
        )
        attack = None
        if node in byz:
            name = config.attack_of(i)
            attack = AttackSpec(
                behaviour=BEHAVIOUR_OF.get(name, "attack"),
                attack="" if name in BEHAVIOUR_OF else name,
                params=config.attack_params,
                delay=delay,
                omniscient=hook,
                colluders=byz - {node},
                rng=node_rng,
            )
        with settings_errors():
            protocols[node] = spec.build_node(ctx, protocol_config, attack)
    channels = _channels(config, trainer, byz)
    honest = [str(i) for i in plan.honest]
    test_x, test_y = plan.dataset.test_x, plan.dataset.test_y
    if config.eval_samples and config.eval_samples < len(test_y):
        test_x, test_y = test_x[: config.eval_samples], test_y[: config.eval_samples]
    test_x, test_y = test_x.to(device), test_y.to(device)
    test_x = trainer.inputs(test_x)  # features, once, under a cached frozen part (--train-only head)
    metrics = Metrics(
        honest=honest,
        eval_nodes=frozenset(str(i) for i in plan.eval_nodes),
        rounds=config.rounds,
        eval_every=config.eval_every,
        evaluate=lambda p: trainer.evaluate(p, test_x, test_y),
        start=start,
        on_row=progress,
        sampled=spec.report == "sampled",
        eval_cap=config.eval_nodes,
        evaluate_node=_local_buffers_evaluation(trainer, worker, honest, test_x, test_y),
    )
    network = network_for(plan.graph, config)
    faults = FaultSchedule(
        plan, rng=np.random.default_rng(derive_seed(config.seed, "faults")), trace=plan.churn
    )
    engine = Engine(
        protocols,
        network=network,
        worker=worker,
        observers=(faults, metrics),
        keep_outbox=hook is not None and bool(byz),
        channels=channels,
    )
    holder["engine"] = engine
    metrics.engine = engine
    faults.install(engine)
    engine.run()
    metrics.finish()
    node_rows = metrics.node_rows(engine.alive)
    # Break the run's reference cycles (metrics -> engine -> observers -> metrics; hook -> holder -> engine):
    # the engine and every node's models are freed now, not at some later full collection.
    metrics.engine = None
    holder.clear()
    return Result(
        plan=plan,
        rows=metrics.rows,
        crashed_ids={int(n) for n in faults.crashed},
        wall_time=time.perf_counter() - start,
        engine_stats={
            "virtual_time": engine.now,
            "events": engine.events_handled,
            "lost": network.lost,
            "penalties": engine.penalties,
            "train_steps": worker.steps_run,
            "bytes": engine.bytes_sent,
            "messages": engine.messages_sent,
            "signatures_verified": verifier.checked if verifier is not None else 0,
            **({"codec_rejected": dict(sorted(engine.codec_rejected.items()))} if channels else {}),
            "device": str(device),  # what device = "auto" resolved to
        },
        protocols=protocols,
        nodes=node_rows,
        faults=faults.log,
    )


def _channels(config: SimConfig, trainer: Trainer, byz: frozenset[PeerId]) -> dict[PeerId, Any]:
    """One compression/privacy channel per node (none when the run asks for neither): issue 18."""
    settings = config.channel_settings()
    if not settings.active:
        return {}
    from phalanx.gossip.compression.channel import layout_for

    layout = layout_for((p.shape for p in trainer.module.parameters()), int(trainer.initial.numel()))
    return {
        str(i): settings.build(
            trainer.initial,
            rng=torch.Generator().manual_seed(derive_seed(config.seed, "channel", i)),
            layout=layout,
            private=str(i) not in byz,
        )
        for i in range(config.nodes)
    }
def _local_buffers_evaluation(
    trainer: Trainer, worker: Any, honest: list[PeerId], test_x: torch.Tensor, test_y: torch.Tensor
) -> Callable[[torch.Tensor, PeerId | None], tuple[float, float]] | None:
    """Under a buffer policy that keeps buffers local (BatchNorm statistics under ``local``): evaluate each
    node's model with its own buffers, and the average model with the mean of the honest nodes' buffers.
    None when nothing is kept local (every buffer travels in the model vector)."""
    if not trainer.local_dim:
        return None

    def evaluate(params: torch.Tensor, node: PeerId | None) -> tuple[float, float]:
        if node is not None:
            buffers = worker.buffers_of(node)
        else:
            kept = [worker.states[n].buffers for n in honest if n in worker.states]
            buffers = torch.stack(kept).mean(dim=0) if kept else trainer.initial_local
        return trainer.evaluate(params, test_x, test_y, buffers=buffers)

    return evaluate


def _schedules(
    plan: Plan,
) -> tuple[
    Callable[[PeerId], Callable[[int], Mapping[PeerId, float]]], Callable[[int], dict[int, dict[int, float]]]
]:
    """Per node, its mixing weights of a round; and every node's weights of a round (for attackers)."""
    config = plan.config
    graph_at = parse_topology(config.topology).graph_of_round(config.nodes, config.seed)
    if graph_at is None:
        raise ConfigError(f"topology {config.topology!r} does not change with the rounds")
    cache: dict[int, dict[int, dict[int, float]]] = {}

    def weights_at(round_: int) -> dict[int, dict[int, float]]:
        if round_ not in cache:
            if len(cache) > 4:
                cache.pop(min(cache))
            cache[round_] = neighbour_weights(graph_at(round_), config.mixing)
        return cache[round_]

    def for_node(node: PeerId) -> Callable[[int], Mapping[PeerId, float]]:
        i = int(node)
        return lambda r: {str(j): w for j, w in weights_at(r)[i].items()}

    return for_node, weights_at
