"""CRC32C over long buffers: the hardware path interleaves three streams
(blocks of 256 and 8192 bytes) and combines them; it must agree with the
table implementation at every length around the block boundaries."""

from __future__ import annotations

import random

import pytest

from aoflite.segment import crc32c, crc32c_hardware, force_software_crc32c

BOUNDARIES = [767, 768, 769, 3 * 256 * 2 + 5, 4096, 3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1, 100_003]


@pytest.mark.skipif(not crc32c_hardware(), reason="no CRC32C instruction on this CPU")
@pytest.mark.parametrize("length", BOUNDARIES)
@pytest.mark.parametrize("misalign", [0, 3])
def test_interleaved_streams_match_table(length, misalign):
    """Hardware and software CRC agree on long, misaligned buffers, and
    chaining over a split equals one pass."""
    rng = random.Random(length * 7 + misalign)
    data = bytes(rng.getrandbits(8) for _ in range(length + misalign))[misalign:]
    hw = crc32c(data)
    force_software_crc32c(True)
    try:
        sw = crc32c(data)
    finally:
        force_software_crc32c(False)
    assert hw == sw
    cut = rng.randrange(length + 1)
    assert crc32c(data[cut:], crc32c(data[:cut])) == hw
