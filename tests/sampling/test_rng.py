import torch
from scipy import stats

from mcdrop.sampling import rng
from tests.conftest import ALPHA, z_bound

# The first outputs of SplitMix64 seeded with 1234567, as printed by the reference C code
# (https://prng.di.unimi.it/splitmix64.c) and used as test vectors by other implementations.
REFERENCE_1234567 = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
                     16408922859458223821]


def test_splitmix64_matches_the_reference_implementation_bit_for_bit():
    assert rng.splitmix64(1234567, 5) == REFERENCE_1234567


def test_mask_words_are_the_splitmix64_sequence_of_their_key():
    """The tensor path gives the reference outputs: word j of a key is the (j+1)-th SplitMix64 output."""
    keys = torch.tensor([[1234567 - (1 << 64) if 1234567 >= 1 << 63 else 1234567]], dtype=torch.int64)
    words = rng.random_words(keys, 5)[0, 0].tolist()
    assert [w & ((1 << 64) - 1) for w in words] == REFERENCE_1234567


def test_tensor_mixer_matches_python_mixer():
    values = [0, 1, 2, 12345, (1 << 63) - 1, 1 << 40, -1, -(1 << 63)]
    x = torch.tensor(values, dtype=torch.int64)
    mixed = rng._mix_(x.clone())
    for v, m in zip(values, mixed.tolist(), strict=True):
        assert m & ((1 << 64) - 1) == rng.mix64(v)


def test_keys_depend_on_coordinates_only():
    key = rng.seed_key(7)
    rows, samples = torch.arange(5), torch.arange(3)
    full = rng.stream_keys(key, (0, 0), rows, samples)
    part = rng.stream_keys(key, (0, 0), rows[2:4], samples[1:])
    assert torch.equal(full[1:, 2:4], part)
    assert not torch.equal(full, rng.stream_keys(key, (1, 0), rows, samples))
    assert not torch.equal(full, rng.stream_keys(rng.seed_key(8), (0, 0), rows, samples))


def test_bytes_are_uniform_chi_square():
    words = rng.random_words(rng.stream_keys(rng.seed_key(1), (0, 0), torch.arange(200), torch.arange(50)), 32)
    counts = torch.bincount(words.view(torch.uint8).flatten().long(), minlength=256).numpy()
    assert stats.chisquare(counts).pvalue > ALPHA


def test_neighbouring_words_uncorrelated():
    words = rng.random_words(rng.stream_keys(rng.seed_key(2), (0, 0), torch.arange(100), torch.arange(100)), 16)
    u = words.view(torch.int16).double().flatten()
    r = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()
    assert abs(r) < z_bound() / (u.numel() - 1) ** 0.5


def test_seed_must_be_int():
    import pytest

    with pytest.raises(TypeError, match="seed must be an int"):
        rng.seed_key("1")  # type: ignore[arg-type]


def test_vector_seed_keys_match_scalar():
    seeds = torch.tensor([0, 1, 2**40, 2**63 - 1])
    keys = rng.seed_keys(seeds)
    assert [k & ((1 << 64) - 1) for k in keys.tolist()] == [rng.seed_key(int(s)) for s in seeds.tolist()]
