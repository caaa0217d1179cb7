"""Sign and verify rates of the daemon's signing algorithms with PyJWT and loaded key objects."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from sessiond_server.config import SIGNING_ALGORITHMS
from sessiond_server.keys import generate_private_key

# Cost ratios below this are reported as a tie, because repeated runs on the
# shared 2-core development machine moved single rates by more than 10 %.
TIE_RATIO = 1.10
# A base64url SHA-256 hash, as the rth and csrf claims of an access token
# from tokens.AccessTokenCodec.issue carry.
_HASH = "q" * 43


@dataclass(frozen=True)
class AlgorithmCost:
    algorithm: str
    signs_per_s: float
    verifies_per_s: float
    token_chars: int

    @property
    def sign_us(self) -> float:
        return 1e6 / self.signs_per_s

    @property
    def verify_us(self) -> float:
        return 1e6 / self.verifies_per_s


def _claims() -> dict[str, Any]:
    """Return claims shaped like an access token's: a small payload, the standard claims and two hashes."""
    now = int(time.time())
    return {
        "role": "reader",
        "iss": "sessiond",
        "sub": "bench-user-0",
        "sid": "6f1c2a4e-0000-4000-8000-000000000000",
        "iat": now,
        "exp": now + 3600,
        "rth": _HASH,
        "csrf": _HASH,
    }


def _rate(call: Any, seconds: float) -> float:
    """Return calls per second of call, run in a loop for about seconds."""
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    now = started
    while now < deadline:
        call()
        count += 1
        now = time.perf_counter()
    return count / (now - started)


def measure_algorithm(algorithm: str, seconds: float) -> AlgorithmCost:
    private_key = generate_private_key(algorithm)
    public_key = private_key.public_key()
    claims = _claims()
    headers = {"kid": "bench"}
    token = jwt.encode(claims, private_key, algorithm=algorithm, headers=headers)
    options = {"require": ["exp", "iat", "iss", "sub", "sid", "rth"]}

    def sign() -> None:
        jwt.encode(claims, private_key, algorithm=algorithm, headers=headers)

    def verify() -> None:
        jwt.decode(
            token,
            public_key,
            algorithms=[algorithm],
            issuer="sessiond",
            options=options,
        )

    # Each rate is the faster of two rounds, as the floors are.
    return AlgorithmCost(
        algorithm=algorithm,
        signs_per_s=max(_rate(sign, seconds), _rate(sign, seconds)),
        verifies_per_s=max(_rate(verify, seconds), _rate(verify, seconds)),
        token_chars=len(token),
    )


def measure_algorithms(seconds: float) -> list[AlgorithmCost]:
    return [measure_algorithm(algorithm, seconds) for algorithm in SIGNING_ALGORITHMS]


def default_algorithm_verdict(costs: list[AlgorithmCost], default: str) -> str:
    """Return a sentence on whether the measured costs support the default algorithm.

    The criterion is the cost of one sign plus one verify, because every
    session signs at create and refresh and verifies on each request. The
    sentence also names the cheapest algorithm for verify alone, which is
    what a verify-heavy workload pays.
    """
    by_name = {cost.algorithm: cost for cost in costs}
    chosen = by_name[default]

    def pair_us(cost: AlgorithmCost) -> float:
        return cost.sign_us + cost.verify_us

    cheapest_pair = min(costs, key=pair_us)
    cheapest_verify = min(costs, key=lambda cost: cost.verify_us)
    pairs = ", ".join(f"{cost.algorithm} {pair_us(cost):.0f} µs" for cost in costs)
    pair_ratio = pair_us(chosen) / pair_us(cheapest_pair)
    if cheapest_pair.algorithm == default:
        verdict = (
            f"The measurements support it: one sign plus one verify costs {pairs}, "
            f"so {default} is the cheapest pair"
        )
    elif pair_ratio < TIE_RATIO:
        verdict = (
            f"The measurements support it: one sign plus one verify costs {pairs}, "
            f"so {default} is within {TIE_RATIO - 1:.0%} of the cheapest pair "
            f"({cheapest_pair.algorithm}), closer than one run on a shared machine "
            "can separate"
        )
    else:
        verdict = (
            f"The measurements do not support it on cost alone: one sign plus one verify "
            f"costs {pairs}, so {cheapest_pair.algorithm} is the cheapest pair, "
            f"{pair_ratio:.2f}x cheaper than {default}"
        )
    ratio = chosen.verify_us / cheapest_verify.verify_us
    if cheapest_verify.algorithm != default and ratio >= TIE_RATIO:
        verdict += (
            f". {cheapest_verify.algorithm} verifies fastest "
            f"({cheapest_verify.verify_us:.0f} µs against {chosen.verify_us:.0f} µs for "
            f"{default}, {ratio:.1f}x), which matters where verifies far outnumber signs"
        )
    token_sizes = ", ".join(f"{cost.algorithm} {cost.token_chars}" for cost in costs)
    return f"{verdict}. Token length in characters: {token_sizes}."
