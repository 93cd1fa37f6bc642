"""Assemble and run one node from a :class:`~phalanx.node.config.NodeConfig`: data shard and learner, identity,
checkpoint, libp2p transport, the protocol object (optionally wrapped as a Byzantine attacker), the runtime
and the metrics endpoint. ``phalanx node run`` is a thin shell around :func:`run_node`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, TextIO

import numpy as np
import torch
import trio

from phalanx.gossip import registry
from phalanx.gossip.aggregator import rule_names
from phalanx.gossip.byzantine import BEHAVIOURS, attack_names
from phalanx.gossip.compression.channel import Channel
from phalanx.gossip.events import Action
from phalanx.gossip.identity import PeerIdKeys, Signer, Verifier
from phalanx.gossip.protocol import Protocol
from phalanx.gossip.roster import Overlay, Reconfigurable, Roster
from phalanx.gossip.spec import AttackSpec, NodeContext, SettingsError, WorldDefaults
from phalanx.gossip.wire import Limits
from phalanx.node import checkpoint as ckpt
from phalanx.node.addresses import addrs_factory, check_announce, watch_neighbour
from phalanx.node.bans import BanList
from phalanx.node.config import ConfigError, NodeConfig, neighbours_from_files
from phalanx.node.datasets import Dataset, load_dataset
from phalanx.node.device import resolve_device
from phalanx.node.identity import load_or_create_key, peer_id_of, signer_of
from phalanx.node.learner import Learner, LearnerError, TrainConfig, derive_seed
from phalanx.node.members import MemberService, transport_addrs
from phalanx.node.metrics import Metrics, serve
from phalanx.node.runtime import NodeRuntime, RuntimeSettings
from phalanx.node.transfer import Features, check_features, partition_for
from phalanx.node.transport import (
    STRANGER_BUDGET,
    Acquaintances,
    Libp2pTransport,
    TransportError,
    open_libp2p_transport,
)


def byzantine_behaviour(spec: str) -> tuple[str, str]:
    """(behaviour, attack name) for a ``--byzantine`` value: a behaviour of gossip.byzantine or an attack."""
    if not spec:
        return "", ""
    if spec in BEHAVIOURS and spec != "attack":
        return spec, ""
    names = attack_names()
    if spec not in names:
        raise ConfigError(
            f"unknown Byzantine behaviour or attack {spec!r}; choose one of: {', '.join(names)}"
        )
    return "attack", spec


def check(config: NodeConfig) -> None:
    if config.rule not in rule_names():
        raise ConfigError(
            f"unknown aggregation rule {config.rule!r}; choose one of: {', '.join(rule_names())}"
        )
    try:
        registry.get(config.protocol).config(config)  # unknown protocol or protocol params: one line
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    if config.tensorboard is not None:
        from phalanx.node.tensorboard import check_available

        check_available()  # one line before anything starts when the optional package is missing
    byzantine_behaviour(config.byzantine)
    for addr in config.listen:
        _multiaddr(addr, "listen")
    for addr in config.announce:
        check_announce(addr)
    for addr in (*config.neighbours, *config.bootstrap, *config.relay):
        _peer_multiaddr(addr)
    for addr in config.relay:
        if "/p2p-circuit" in addr:
            raise ConfigError(f"--relay {addr!r} is itself a circuit address: give the relay's own address")
    if config.degree and config.protocol != "dpsgd":
        raise ConfigError(
            f"--degree chooses D-PSGD neighbours; {config.protocol} draws its peers from the members itself"
        )
    if config.degree and config.byzantine:
        raise ConfigError("--degree is not available to a Byzantine node (give it --neighbour lists)")
    if config.protocol == "el-oracle" and config.bootstrap and not config.neighbours:
        raise ConfigError("el-oracle needs every node to know the same peers: give --neighbour lists")


def _multiaddr(text: str, what: str) -> object:
    import multiaddr

    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:
        raise ConfigError(
            f"bad {what} multiaddr {text!r}: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from None


def _peer_multiaddr(text: str) -> None:
    from libp2p.peer.peerinfo import info_from_p2p_addr

    addr = _multiaddr(text, "peer")
    try:
        info_from_p2p_addr(addr)  # type: ignore[arg-type]
    except Exception:
        raise ConfigError(f"peer multiaddr {text!r} needs /ip4/HOST/tcp/PORT/p2p/PEER_ID") from None


def build_channel(config: NodeConfig, learner: Learner) -> Channel:
    """This node's compression/privacy channel (gossip/compression/channel.py): the learner's initial model is
    ``x_hat[0]``, peers are not assumed to share it (the first model message to each is a keyframe)."""
    from phalanx.gossip.compression.channel import layout_for

    settings = config.channel_settings()
    trainer = learner.trainer
    return settings.build(
        trainer.initial,
        rng=torch.Generator().manual_seed(derive_seed(config.seed, "channel", config.index)),
        layout=layout_for((p.shape for p in trainer.module.parameters()), int(trainer.initial.numel())),
        shared_reference=False,
        private=not config.byzantine,
    )


def build_protocol(
    config: NodeConfig,
    me: str,
    neighbours: tuple[str, ...],
    params: torch.Tensor,
    start_round: int,
    signer: Signer | None = None,
    *,
    joined: bool = False,
) -> Protocol:
    """The protocol object for this node, from its registry entry. For the sampling protocols (MoDeST,
    Epidemic Learning) the neighbours are the initial membership: every peer this node may sample (on a
    joined network, ``joined``: the members known so far, or MoDeST's bootstrap peers it joins through)."""
    spec = registry.get(config.protocol)
    behaviour, attack = byzantine_behaviour(config.byzantine)
    ctx = NodeContext(
        node=me,
        params=params,
        neighbours=neighbours,
        peers=tuple(sorted({me, *neighbours})),
        rng=np.random.default_rng(derive_seed(config.seed, "protocol", config.index)),
        start_round=start_round,
        signer=signer,
        verifier=Verifier(PeerIdKeys()),  # a libp2p ed25519 peer id is its public key
        late=joined and spec.report == "sampled",  # MoDeST joins through its bootstrap peers
    )
    attack_spec = None
    if behaviour:
        attack_spec = AttackSpec(
            behaviour=behaviour,
            attack=attack,
            params=config.attack_params,
            delay=config.attack_delay,
            rng=np.random.default_rng(derive_seed(config.seed, "byzantine", config.index)),
        )
    try:
        # a node on a joined network learns more members as it goes: s is not bounded by the first ones
        world = WorldDefaults(max_sample=None if joined else len(neighbours))
        protocol_config = spec.config(config, world)
        return spec.build_node(ctx, protocol_config, attack_spec)
    except SettingsError as exc:  # it names the protocol and the key
        raise ConfigError(str(exc)) from None


def run_node(
    config: NodeConfig,
    *,
    log: TextIO | None = None,
    model: Callable[..., Any] | None = None,
    dataset: Dataset | None = None,
    loss_fn: Callable[..., Any] | None = None,
) -> int:
    """Run the node until its rounds are done (or SIGTERM / SIGINT); returns the exit status. ``model``,
    ``dataset`` and ``loss_fn`` (the Python API's in-memory objects) stand in for the config's specs."""
    check(config)
    if not os.environ.get("PHALANX_DEBUG"):
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    log = log or sys.stdout
    neighbour_addrs = config.neighbours
    if config.topology_file is not None and config.address_book is not None:
        neighbour_addrs += neighbours_from_files(config.topology_file, config.address_book, config.index)
    alone = alone_policy(config, neighbour_addrs)

    device = resolve_device(config.device)  # an absent device: one line, before any data loads
    dataset, shard, features = load_data(config, dataset)
    joined = joins_by_membership(config, neighbour_addrs)
    train = TrainConfig.from_settings(config)
    if loss_fn is not None:
        train = dataclasses.replace(train, loss_fn=loss_fn)
    learner = Learner(
        dataset=dataset,
        shard=shard,
        model=model if model is not None else config.model,
        config=train,
        seed=config.seed,
        index=config.index,
        flipped=config.byzantine == "label-flip",
        device=device,
    )
    key = load_or_create_key(config.key_path)
    peer_id = peer_id_of(key)
    channel = build_channel(config, learner)  # before a checkpoint replaces the initial model (issue 18)
    checkpoint_path = config.data_dir / ckpt.FILENAME
    loaded = ckpt.load_latest(checkpoint_path, dim=learner.dim)
    saved = None if loaded is None else loaded.checkpoint
    if loaded is not None and loaded.fell_back:  # said before anything else, in the log's JSON-lines form
        print(
            json.dumps({"event": "checkpoint-fallback", "path": str(loaded.path), "skipped": loaded.skipped}),
            file=log,
            flush=True,
        )
    if saved is not None and saved.peer_id and saved.peer_id != peer_id:
        raise ConfigError(
            f"checkpoint {checkpoint_path} belongs to peer {saved.peer_id}, this key is {peer_id}"
        )
    if saved is not None:
        learner.check_checkpoint_extra(saved.extra, str(checkpoint_path))  # the same frozen features
    start_round = 0
    metrics = Metrics(peer_id=peer_id)
    if saved is not None:
        learner.state.params.copy_(saved.params)
        learner.state.momentum.copy_(saved.momentum)
        learner.state.steps = saved.steps
        try:  # the buffers --buffers local keeps on the node, and Adam's second moment
            learner.restore_local_buffers(saved.extra)
            learner.restore_optimizer_extra(saved.extra)
        except LearnerError as exc:
            raise ConfigError(f"checkpoint {checkpoint_path}: {exc} (--fresh starts over)") from None
        # A resumable protocol (D-PSGD) restarts at the checkpoint's round; the others resume the model,
        # optimiser state and counters and count rounds from 0 again.
        start_round = saved.round if registry.get(config.protocol).resumable else 0
        metrics.restore(saved.counters)
        if channel.active and "channel" in saved.extra:
            try:
                channel.restore(saved.extra["channel"])
            except ValueError as exc:
                raise ConfigError(f"checkpoint {checkpoint_path}: {exc}") from None
    resumed = resumed_record(config, saved.round if saved is not None else None, start_round, checkpoint_path)

    # a protocol whose frames carry no membership view decodes under the model-only limits (a frame of one
    # model and a few integers), which leaves no room for a decode bomb
    spec = registry.get(config.protocol)
    limits = Limits(dim=learner.dim) if spec.carries_views else Limits.model_only(learner.dim)
    bans = BanList(threshold=config.ban_threshold, window=config.ban_window, duration=config.ban_duration)
    roster = Roster(peer_id, signer_of(key, peer_id), Verifier(PeerIdKeys()), max_members=config.max_members)

    async def main() -> None:
        now: Callable[[], float] = trio.current_time
        if saved is not None:
            bans.restore(saved.bans, now())
        known = Acquaintances()  # neighbours and members get the full budget, strangers STRANGER_BUDGET
        async with (
            open_libp2p_transport(
                key,
                listen=config.listen,
                limits=limits,
                is_banned=lambda p: bans.is_banned(p, now()),
                stall=config.stall_timeout,
                stranger_budget=STRANGER_BUDGET,
                is_known=known,
                addrs_factory=addrs_factory(config.announce),
                relay_service=config.relay_service,  # Circuit Relay v2 (node/relay.py)
                relay_via=config.relay,
                relay_dial=any("/p2p-circuit" in a for a in (*neighbour_addrs, *config.bootstrap)),
            ) as transport,
            trio.open_nursery() as members_nursery,
        ):
            # a relayed address is not a member address: transport_addrs would cut it to the relay's own
            roster.addrs[peer_id] = transport_addrs(
                [a for a in transport.listen_addresses() if "/p2p-circuit" not in a]
            )
            service = MemberService(
                roster,
                transport.host,
                is_banned=lambda p: bans.is_banned(p, now()),
                interval=config.members_interval,
                rng=np.random.default_rng(derive_seed(config.seed, "members", config.index)),
                log=log,
            )
            service.attach()  # every node answers membership exchanges, whatever it runs
            bootstrap_ids = tuple(transport.add_address(a) for a in config.bootstrap)
            neighbours = tuple(transport.add_address(a) for a in neighbour_addrs)
            members_nursery.start_soon(service.run, bootstrap_ids, neighbours)
            if joined:
                neighbours = await wait_for_members(service, config, bootstrap_ids, log)
            elif not neighbours and alone == "wait":
                neighbours = await wait_for_peers(transport, config, log)
            protocol = build_protocol(
                config,
                peer_id,
                neighbours,
                learner.get_vector(),
                start_round,
                signer_of(key, peer_id),
                joined=joined,
            )
            between = (
                between_rounds(config, protocol, service, transport, members_nursery) if joined else None
            )
            known.meet(neighbours, protocol, members=roster.is_known)
            settings = RuntimeSettings(
                rounds=config.rounds,
                eval_every=config.eval_every,
                linger=config.linger,
                checkpoint_path=checkpoint_path,
                protocol_name=config.protocol,
                byzantine=config.byzantine,
                sampled=spec.report == "sampled",
                tensorboard=config.tensorboard,
                join=joined and spec.report == "sampled",
            )
            runtime = NodeRuntime(
                protocol=protocol,
                transport=transport,
                learner=learner,
                limits=limits,
                metrics=metrics,
                bans=bans,
                settings=settings,
                start_round=start_round,
                log=log,
                channel=channel,
                between_rounds=between,
            )
            service.reject = lambda peer, reason, detail: runtime._reject(peer, reason, detail)
            metrics.listen = transport.listen_addresses()  # the announced addresses, with /p2p/PEER_ID
            async with trio.open_nursery() as nursery:
                port = -1
                if config.metrics_port >= 0:
                    port = await nursery.start(
                        partial(serve, host=config.metrics_host), metrics, config.metrics_port
                    )
                runtime.log(
                    "listening",
                    peer_id=peer_id,
                    addrs=metrics.listen,
                    bound=[str(a) for a in transport.host.get_transport_addrs()],
                    metrics_port=port,
                    start_round=start_round,
                    dim=learner.dim,
                    neighbours=list(neighbours),
                    byzantine=config.byzantine or None,
                    features_sha256=features.sha256 if features else None,
                )
                if features is not None:  # which frozen part this node loaded (net up compares the hashes)
                    runtime.log("features", train_only=config.train_only, **features.record())
                if resumed:
                    runtime.log("resumed", **resumed)
                if not neighbours:
                    runtime.log("alone", message="no neighbours: training alone (--alone train)")
                nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
                for peer, addr in zip(neighbours, neighbour_addrs, strict=False):
                    nursery.start_soon(watch_neighbour, transport, peer, addr, runtime.log)
                for addr in config.bootstrap:
                    nursery.start_soon(_dial, transport, transport.add_address(addr))
                await runtime.run()
                with trio.move_on_after(2):  # say goodbye: neighbours replace this node at once
                    await service.announce_leave(tuple(transport.peers())[:8])
                nursery.cancel_scope.cancel()
            members_nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        # A setup error inside a nursery (port in use, unreadable file) arrives wrapped; show it as itself.
        leaves = leaves_of(group)
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            raise KeyboardInterrupt from None
        if leaves and all(isinstance(e, (ValueError, OSError)) for e in leaves):
            raise leaves[0] from None
        raise
    return 0


def joins_by_membership(config: NodeConfig, neighbour_addrs: tuple[str, ...]) -> bool:
    """Whether this node finds its peers through the membership exchange: no fixed neighbours, and either
    ``--degree`` (D-PSGD) or a sampling protocol with a bootstrap peer (MoDeST, EL-Local)."""
    if neighbour_addrs:
        return False
    if config.degree > 0 or (config.bootstrap and config.protocol != "dpsgd"):
        return True
    # the first EL-Local node of a network waits for members to join through it
    return config.protocol == "el-local" and config.alone == "wait"


def data_spec(path: str) -> str:
    """A ``--data`` path as a dataset spec: KIND:PATH as given, FILE.npz, FILE.csv[.gz], DIR of IDX files."""
    from pathlib import Path

    from phalanx.node.datasets import OPTIONS

    kind = path.partition(":")[0]
    if kind in OPTIONS and ":" in path:
        return path
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"--data {path}: no such file or folder")
    name = p.name.lower()
    if name.endswith(".npz"):
        return f"npz:{p}"
    if name.endswith((".csv", ".csv.gz")):
        return f"csv:{p}"
    if p.is_dir():
        return f"idx:{p}"
    raise ConfigError(
        f"--data {path}: not a folder of IDX files, a .npz or a .csv; name the format as KIND:PATH "
        "(idx:, npz:, csv:, cifar10:, cifar100:)"
    )


def load_data(
    config: NodeConfig, dataset: Dataset | None = None
) -> tuple[Dataset, np.ndarray, Features | None]:
    """The dataset, this node's training indices (all of ``--data``, or shard ``index`` of ``nodes``; never the
    samples its frozen features were pretrained on) and those features (``--train-only head``), else None.
    ``dataset``: one given in memory (the Python API), instead of ``--data``/``--dataset``."""
    if dataset is None and config.data:
        dataset = load_dataset(data_spec(config.data))
        features = check_features(config, dataset)
        everything = np.arange(len(dataset.train_y), dtype=np.int64)
        excluded = features.excluded if features else None
        return dataset, everything if excluded is None else np.setdiff1d(everything, excluded), features
    if dataset is None:
        dataset = load_dataset(config.dataset)
    features = check_features(config, dataset)  # --train-only head: the frozen part's samples stay out
    shard = partition_for(
        dataset,
        config.nodes,
        config.partition,
        seed=config.seed,
        excluded=features.excluded if features else None,
    )[config.index]
    return dataset, shard, features


async def wait_for_members(
    service: MemberService, config: NodeConfig, bootstrap: tuple[str, ...], log: TextIO
) -> tuple[str, ...]:
    """Block until the membership exchange taught this node some members; its first neighbours (D-PSGD,
    ``--degree``) or its members (EL, and MoDeST, which announces its Join to some of them)."""
    roster = service.roster
    started = trio.current_time()
    while not roster.members():
        _log_line(
            log,
            "waiting",
            message="no members known yet: exchanging membership with the bootstrap peers"
            if bootstrap
            else "no members yet: waiting for a peer to join through this node",
            seconds=round(trio.current_time() - started, 1),
            addrs=[str(a) for a in service.host.get_addrs()],
        )
        with trio.move_on_after(5):
            while not roster.members():
                await service.changed.wait()
    members = roster.members()
    _log_line(log, "members", count=len(members), seconds=round(trio.current_time() - started, 2))
    if config.protocol == "modest":
        # every member the exchange verified: MoDeST's initial view (its Join goes to `announce` of them).
        # With its bootstrap peers alone, its Join reached only them and it refused the models of
        # aggregators it did not know: 11-18 rounds to be sampled (issue 14)
        return members
    if config.degree:
        rng = np.random.default_rng(derive_seed(config.seed, "overlay", config.index))
        from phalanx.gossip.roster import choose_neighbours

        chosen = choose_neighbours((), members, config.degree, rng)
        await introduce(service, chosen)
        return chosen
    return members


async def introduce(service: MemberService, peers: tuple[str, ...]) -> None:
    """Swap records with new neighbours first, so that they know this node as a member before its model
    arrives (at most the exchange timeout)."""
    async with trio.open_nursery() as nursery:
        for peer in peers:
            if peer not in service.introduced:
                service.introduced.add(peer)
                nursery.start_soon(partial(service.exchange, peer, neighbour=True))


def between_rounds(
    config: NodeConfig,
    protocol: Protocol,
    service: MemberService,
    transport: Libp2pTransport,
    nursery: trio.Nursery,
) -> Callable[[int], list[Action]] | None:
    """What a joined node does between rounds: renew its own record and hand the protocol its current
    neighbours (D-PSGD: the overlay) or members (EL-Local). MoDeST keeps its own view."""
    if not isinstance(protocol, Reconfigurable):
        return None
    roster = service.roster
    target = protocol
    overlay = None
    if config.degree:
        overlay = Overlay(
            config.degree, np.random.default_rng(derive_seed(config.seed, "overlay", config.index))
        )
        dpsgd = protocol
        dpsgd.inbound = roster.is_member  # type: ignore[attr-defined]
        dpsgd.max_degree = 3 * config.degree  # type: ignore[attr-defined]

    def hook(completed: int) -> list[Action]:
        roster.set_round(completed)
        members = roster.members()
        if overlay is None:
            return target.set_peers(members, trio.current_time())
        current = protocol.neighbours_at(completed)  # type: ignore[attr-defined]
        asked = [p for p in roster.take_asked() if p not in current]  # members that chose this node
        room = max(0, 3 * config.degree - len(current))
        chosen = overlay.next((*current, *asked[:room]), members, transport.peers())
        if chosen == tuple(current):
            return []
        fresh = tuple(p for p in chosen if p not in current and p not in service.introduced)
        if fresh:
            nursery.start_soon(introduce, service, fresh)
        return target.set_peers(chosen, trio.current_time())

    return hook


def alone_policy(config: NodeConfig, neighbour_addrs: tuple[str, ...]) -> str:
    """What a node with no configured neighbours does: exit (one line), wait for peers or train alone."""
    policy = config.alone or ("wait" if config.bootstrap else "exit")
    if not neighbour_addrs and policy == "exit":
        raise ConfigError(
            "no neighbours: give --neighbour MULTIADDR (or --topology-file and --address-book), "
            "or --alone wait to wait for peers to connect, or --alone train to train alone"
        )
    return policy


async def wait_for_peers(transport: Libp2pTransport, config: NodeConfig, log: TextIO) -> tuple[str, ...]:
    """Block until some peer is connected (a bootstrap peer dialled, or a peer dialling in); says so every
    few seconds. The peers connected then are this node's neighbours."""
    from phalanx.node.addresses import dial_failure

    async def dial(addr: str) -> None:
        peer = transport.add_address(addr)
        try:
            await transport.connect(peer)
        except TransportError as exc:
            _log_line(log, "unreachable", peer=peer, address=addr, reason=dial_failure(exc))

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for addr in config.bootstrap:
            nursery.start_soon(dial, addr)
        while not transport.peers():
            _log_line(
                log,
                "waiting",
                message="no neighbours yet: waiting for a peer to connect (--alone exit to exit instead)",
                addrs=transport.listen_addresses(),
                seconds=round(trio.current_time() - started, 1),
            )
            with trio.move_on_after(5):
                while not transport.peers():
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return tuple(sorted(transport.peers()))


def _log_line(log: TextIO, event: str, **fields: object) -> None:
    import json

    print(json.dumps({"event": event, **fields}, separators=(",", ":")), file=log, flush=True)


def resumed_record(
    config: NodeConfig, saved_round: int | None, start_round: int, path: object
) -> dict[str, object]:
    """The "resumed" log line's fields when this node starts from a checkpoint (empty when it does not)."""
    if saved_round is None:
        return {}
    done = bool(config.rounds) and start_round >= config.rounds
    if done:
        message = (
            f"resumed from {path} at round {saved_round}: all {config.rounds} rounds are done already; "
            "--fresh starts over (moves the checkpoint aside)"
        )
    elif start_round:
        message = (
            f"resumed from {path} at round {start_round}; --fresh starts over (moves the checkpoint aside)"
        )
    else:
        message = (
            f"resumed the model of round {saved_round} from {path}; {config.protocol} counts rounds from 0 "
            "again; --fresh starts over (moves the checkpoint aside)"
        )
    return {"round": start_round, "checkpoint_round": saved_round, "finished": done, "message": message}


def leaves_of(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for e in group.exceptions for leaf in leaves_of(e)]
    return [group]


async def _dial(transport: Libp2pTransport, peer: str) -> None:
    with contextlib.suppress(TransportError):
        await transport.connect(peer)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return
