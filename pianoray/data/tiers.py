"""The four data tiers of the seed design and the loss terms each one carries.

T1 labeled segments (regression + ranking within a passage),
T2 competition segments (ranking by placement within one round),
T3 cross-performer groups (InfoNCE: same piece, other performer is the positive),
T4 clean/augmented pairs (invariance between the two embeddings).
"""

from __future__ import annotations

from enum import IntEnum


class Tier(IntEnum):
    T1 = 1
    T2 = 2
    T3 = 3
    T4 = 4


TIER_NAMES = {t.name: t for t in Tier}

# Which loss terms a sample of each tier contributes to. The multi-task total masks by these.
TIER_TERMS: dict[Tier, frozenset[str]] = {
    Tier.T1: frozenset({"regression", "ranking"}),
    Tier.T2: frozenset({"ranking"}),
    Tier.T3: frozenset({"contrastive"}),
    Tier.T4: frozenset({"invariance"}),
}


def parse_tier(name: str | int | Tier) -> Tier:
    """'T1' / 1 / Tier.T1 -> Tier.T1, with a clear error for anything else."""
    if isinstance(name, Tier):
        return name
    if isinstance(name, int) and name in {t.value for t in Tier}:
        return Tier(name)
    key = str(name).upper()
    if key in TIER_NAMES:
        return TIER_NAMES[key]
    raise ValueError(f"unknown tier {name!r}: expected one of T1, T2, T3, T4")
