"""What a soak runs: its settings and the fault plan of every site (``bench/soak.py`` runs it).

A fault fires at one of :data:`POINTS`, the moments just before a site sends a phase's message
(``bench/soak_site.py``, ``federation.site_round.SiteRound``'s ``before_send``).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

POINTS = ("advertise", "share_keys", "masked_input", "unmask", "result")
ABORT_ROUND = 2  # half the sites miss the unmask deadline: the round must abort and reveal nothing


@dataclass
class Settings:
    sites: int
    rounds: int
    seed: int = 1
    phase_timeout_s: float = 0.0  # 0: max(6, N / 10) seconds
    train_timeout_s: float = 0.0  # 0: as phase_timeout_s
    consistency_check: bool = True  # False: the semi-honest protocol (no survivor signatures)
    faults: bool = True

    def __post_init__(self) -> None:
        self.phase_timeout_s = self.phase_timeout_s or max(6.0, self.sites / 10)
        self.train_timeout_s = self.train_timeout_s or self.phase_timeout_s
    timeout_s: float = 900.0



def plan_faults(names: list[str], s: Settings, rng: random.Random, *, max_round: int) -> dict[str, dict[str, Any]]:
    """Per site: ``{round: {"point", "action", "seconds"}}`` for rounds 1..max_round (one fault per site-round)."""
    plans: dict[str, dict[str, Any]] = {n: {} for n in names}
    kills, cursor = max(2, s.sites // 20), 0
    for number in range(1, max_round + 1):
        if number == ABORT_ROUND:
            for name in rng.sample(names, math.ceil(s.sites / 2)):
                plans[name][str(number)] = {"point": "unmask", "action": "slow", "seconds": s.phase_timeout_s + 2}
            continue
        chosen = rng.sample(names, kills + 1 + s.sites // 10)
        for name in chosen[:kills]:
            plans[name][str(number)] = {"point": POINTS[cursor % len(POINTS)], "action": "kill"}
            cursor += 1
        plans[chosen[kills]][str(number)] = {"point": rng.choice(POINTS), "action": "slow",
                                             "seconds": s.phase_timeout_s + 2}
        for name in chosen[kills + 1:]:
            plans[name][str(number)] = {"point": rng.choice(POINTS), "action": "delay",
                                        "seconds": round(rng.uniform(0.05, 1.5), 2)}
    return plans
