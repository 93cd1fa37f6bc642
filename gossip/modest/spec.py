"""MoDeST's registry entry: parameters, config, how to build an honest node and a Byzantine one."""

from __future__ import annotations

from dataclasses import replace

from phalanx.gossip.byzantine import ByzantineModest
from phalanx.gossip.modest.config import ModestConfig, ModestParams, configure
from phalanx.gossip.modest.node import Modest
from phalanx.gossip.protocol import Protocol
from phalanx.gossip.spec import AttackSpec, NodeContext, ProtocolSpec


def build(ctx: NodeContext, config: ModestConfig) -> Modest:
    return Modest(
        node=ctx.node,
        params=ctx.params,
        peers=ctx.members(),
        config=config,
        rng=ctx.rng,
        late=ctx.late,
        signer=ctx.signer,
        verifier=ctx.verifier,
    )


def build_byzantine(ctx: NodeContext, config: ModestConfig, attack: AttackSpec) -> Protocol:
    """An honest MoDeST inside, whose outgoing models are replaced; a Byzantine aggregator is rushing."""
    roles = config.byzantine_roles
    inner = build(ctx, replace(config, rushing="aggregator" in roles))
    name = attack.attack or attack.behaviour
    return ByzantineModest(inner, attack=name, attack_params=attack.params, roles=roles)


SPEC = ProtocolSpec(
    name="modest",
    summary="MoDeST: each round a hash-ranked sample of s trainers and a aggregators (decentralized sampling)",
    params=ModestParams,
    configure=configure,
    build=build,
    byzantine=build_byzantine,
    rule_inputs=lambda config, degree: config.needed_models,
    own_row=False,
    report="sampled",
    carries_views=True,
)
