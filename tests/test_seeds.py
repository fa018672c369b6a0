"""derive_seed: one way to derive a seed from (seed, keys...)."""

import hashlib

from dstray.seeds import derive_seed


def test_derive_seed_is_the_generation_sample_seed():
    # the per-sample seed generation always used (the Parquet `seed` column): sha256 of "dstray:{seed}:{index}"
    for seed, index in ((0, 0), (3, 17), (123456789, 2**40)):
        digest = hashlib.sha256(f"dstray:{seed}:{index}".encode()).digest()
        assert derive_seed(seed, index) == int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def test_keys_separate_streams_and_values_fit_every_rng():
    a, b = derive_seed(0, "dst-backgrounds", 0), derive_seed(0, "dst-backgrounds", 1)
    c = derive_seed(1, "dst-backgrounds", 0)
    assert len({a, b, c}) == 3 and all(0 <= s < 2**63 for s in (a, b, c))
    assert derive_seed(5, "x", 2) == derive_seed(5, "x", 2)
