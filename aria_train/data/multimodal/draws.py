"""The mixture's source choices, computed a block of draws at a time.

Draw j of the stream takes source k = searchsorted(cumulative weights, u_j) with
u_j = numpy.random.default_rng([seed, j]).random(): a pure function of (seed, j). Building a
numpy generator per draw costs ~12 us (SeedSequence's hashing runs as Python-level code), and
every rank plans every draw of the global batch, so that cost would be the part of a rank's data
work that grows with the world size. uniforms() computes the same u_j for many j at once:
SeedSequence's word hashing and PCG64's seeding and first output, vectorized over j (numpy's
uint32 / uint64 arithmetic wraps as the C code does; 128-bit products in 16-bit limbs). The numbers are numpy's own,
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


_LIMB, _LIMBS = 16, 8  # 128-bit numbers as 8 limbs of 16 bits: limb products and their sums fit uint64
_MASK = np.uint64(0xFFFF)


def _limbs(hi: np.ndarray, lo: np.ndarray) -> list:
    return [((lo if i < 4 else hi) >> np.uint64(_LIMB * (i % 4))) & _MASK for i in range(_LIMBS)]


def _join(limbs: list) -> tuple:
    lo = limbs[0] | (limbs[1] << np.uint64(16)) | (limbs[2] << np.uint64(32)) | (limbs[3] << np.uint64(48))
    hi = limbs[4] | (limbs[5] << np.uint64(16)) | (limbs[6] << np.uint64(32)) | (limbs[7] << np.uint64(48))
    return hi, lo


def _carry(columns: list) -> list:
    out, carry = [], np.uint64(0)
    for column in columns:
        column = column + carry
        out.append(column & _MASK)
        carry = column >> np.uint64(_LIMB)
    return out  # the carry out of the top limb is the part mod 2**128 drops


def _mul_add(x: list, const: list, add: list) -> list:
    """(x * const + add) mod 2**128, limb-wise."""
    columns = list(add)
    for i in range(_LIMBS):
        for j in range(_LIMBS - i):
            if const[j]:
                columns[i + j] = columns[i + j] + x[i] * np.uint64(const[j])
    return _carry(columns)


_PCG_MULT_LIMBS = [(PCG_MULT >> (_LIMB * i)) & 0xFFFF for i in range(_LIMBS)]


def _pcg64_first_doubles(s0, s1, s2, s3) -> np.ndarray:
    """PCG64 seeded with (s0:s1, s2:s3) (numpy's pcg64_set_seed), its first next_double()."""
    one = np.uint64(1)
    inc = _limbs((s2 << one) | (s3 >> np.uint64(63)), (s3 << one) | one)
    state = _carry([a + b for a, b in zip(inc, _limbs(s0, s1))])  # srandom: step from 0 (= inc), add the seed
    state = _mul_add(state, _PCG_MULT_LIMBS, inc)  # srandom's second step
    state = _mul_add(state, _PCG_MULT_LIMBS, inc)  # the first output's step
    hi, lo = _join(state)
    x, rot = hi ^ lo, hi >> np.uint64(58)  # XSL-RR: xor the halves, rotate by the top 6 bits
    out = (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))
    return (out >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


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
    words = state[0::2] | (state[1::2] << np.uint64(32))  # generate_state(4, uint64)
    out = _pcg64_first_doubles(*words)
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
