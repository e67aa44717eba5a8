"""Deterministic choices from a seed and an index."""

from __future__ import annotations

import hashlib

MASK = (1 << 64) - 1


def mix(value: int) -> int:
    """A 64-bit integer hash (splitmix64 finaliser): cheap per-row randomness."""
    value = (value + 0x9E3779B97F4A7C15) & MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK
    return value ^ (value >> 31)


class Dice:
    """A stream of deterministic choices for one (seed, index) pair."""

    def __init__(self, seed: int, index: int, salt: str = "row") -> None:
        self.key = f"{seed}:{salt}:{index}"
        self.round = 0
        self.bits = self._draw()

    def _draw(self) -> int:
        digest = hashlib.blake2b(f"{self.key}:{self.round}".encode(), digest_size=64).digest()
        self.round += 1
        return int.from_bytes(digest, "big")

    def pick(self, n: int) -> int:
        if self.bits < 1 << 64:
            self.bits = self._draw()
        self.bits, rest = divmod(self.bits, n)
        return rest

    def chance(self, num: int, den: int) -> bool:
        return self.pick(den) < num
