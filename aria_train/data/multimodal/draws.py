"""The mixture's source choices, computed a block of draws at a time.

Draw j of the stream takes source k = searchsorted(cumulative weights, u_j) with
u_j = numpy.random.default_rng([seed, j]).random(): a pure function of (seed, j). Building a
numpy generator per draw costs ~12 us (SeedSequence's hashing runs as Python-level code), and
every rank plans every draw of the global batch, so that cost would be the part of a rank's data
work that grows with the world size. uniforms() computes the same u_j for many j at once:
SeedSequence's word hashing vectorized over j (numpy's uint32 arithmetic wraps as the C code
does), then PCG64's seeding and first output with Python integers. The numbers are numpy's own,
bit for bit (tests/mm_data/test_mm_draws.py compares them over many seeds and draws), so the
stream is the one the per-draw generator gave.

The algorithms: numpy.random.SeedSequence (after M. O'Neill's seed_seq_fe) with its default pool
of 4 words and PCG64 (XSL-RR 128/64), as numpy documents and keeps them stable.
"""

from __future__ import annotations

import numpy as np

_U32 = np.uint32
INIT_A, MULT_A = _U32(0x43B0D7E5), _U32(0x931E8875)
INIT_B, MULT_B = _U32(0x8B51F9DD), _U32(0x58F38DED)
MIX_MULT_L, MIX_MULT_R = _U32(0xCA01F9DD), _U32(0x4973F715)
POOL = 4
PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341
M64, M128 = (1 << 64) - 1, (1 << 128) - 1


def _words(n: int) -> list[int]:
    """numpy's int -> uint32 words (little end first; 0 is one word)."""
    if n == 0:
        return [0]
    out = []
    while n > 0:
        out.append(n & 0xFFFFFFFF)
        n >>= 32
    return out


class _HashConst:
    """The running hash constant: the same sequence for every j, so a scalar."""

    def __init__(self, init, mult):
        self.value, self.mult = init, mult

    def next(self):
        self.value = _U32(self.value * self.mult)
        return self.value


def _xorshift(x):
    return x ^ (x >> _U32(16))


def _seed_words(entropy) -> np.ndarray:
    """entropy uint32 [POOL, n] (zero padded) -> generate_state(4, uint64) as uint32 [8, n]."""
    with np.errstate(over="ignore"):
        hc = _HashConst(INIT_A, MULT_A)
        mixer = []
        for i in range(POOL):
            value = entropy[i] ^ hc.value
            mixer.append(_xorshift(value * hc.next()))
        for src in range(POOL):
            for dst in range(POOL):
                if src != dst:
                    hashed = _xorshift((mixer[src] ^ hc.value) * hc.next())
                    mixed = MIX_MULT_L * mixer[dst] - MIX_MULT_R * hashed
                    mixer[dst] = _xorshift(mixed)
        hb = _HashConst(INIT_B, MULT_B)
        out = []
        for i in range(2 * POOL):
            value = mixer[i % POOL] ^ hb.value
            out.append(_xorshift(value * hb.next()))
    return np.stack(out)


def _pcg64_first_double(s0: int, s1: int, s2: int, s3: int) -> float:
    state, seq = (s0 << 64) | s1, (s2 << 64) | s3
    inc = ((seq << 1) | 1) & M128
    state = (inc + state) & M128  # srandom: step from 0 (= inc), add the seed...
    state = (state * PCG_MULT + inc) & M128  # ...step; then the first output's step
    state = (state * PCG_MULT + inc) & M128
    x, rot = ((state >> 64) ^ state) & M64, state >> 122
    out = ((x >> rot) | (x << ((-rot) & 63))) & M64
    return (out >> 11) * (1.0 / 9007199254740992.0)


def uniforms(seed: int, start: int, count: int) -> np.ndarray:
    """float64 [count]: numpy.random.default_rng([seed, j]).random() for j in [start, start+count)."""
    js = range(start, start + count)
    head = _words(int(seed))
    if len(head) + len(_words(start + count - 1)) > POOL:  # beyond 64-bit draws of big seeds
        return np.asarray([np.random.default_rng([seed, j]).random() for j in js])
    entropy = np.zeros((POOL, count), dtype=np.uint32)
    for i, w in enumerate(head):
        entropy[i] = w
    j = np.arange(start, start + count, dtype=np.uint64)
    entropy[len(head)] = (j & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    high = (j >> np.uint64(32)).astype(np.uint32)
    if high.any():  # draws past 2**32 have a second word (zero-valued high words are absent)
        entropy[len(head) + 1] = high
    state = _seed_words(entropy).astype(np.uint64)
    s = (state[0::2] | (state[1::2] << np.uint64(32))).T.tolist()
    out = np.asarray([_pcg64_first_double(*words) for words in s])
    if high.any() and not high.all():  # a block straddling 2**32: the low draws have one word fewer
        low = np.nonzero(high == 0)[0]
        out[low] = uniforms(seed, start, len(low))
    return out


class SourceChoices:
    """choose(j) = the source of draw j, computed `block` draws at a time."""

    def __init__(self, seed: int, cumulative: np.ndarray, block: int = 1024):
        self.seed = int(seed)
        self.cumulative = np.asarray(cumulative)
        self.block = block
        self._start, self._choices = -1, None

    def __call__(self, draw: int) -> int:
        start = draw - draw % self.block
        if start != self._start:
            u = uniforms(self.seed, start, self.block)
            k = np.searchsorted(self.cumulative, u, side="right")
            self._start, self._choices = start, np.minimum(k, len(self.cumulative) - 1).tolist()
        return self._choices[draw - start]
