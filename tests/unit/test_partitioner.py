"""Output records are keyed so that one aggregate's stay in order, on the partition any Kafka client's default
partitioner picks for the key (murmur2, as Java's)."""

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from shared.kafka import KeyPartitioner


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=64))
def test_output_records_land_on_the_partition_the_default_partitioner_picks(key: bytes, partitions: int) -> None:
    """Remembering the hashes of the latest keys changes nothing."""
    every = list(range(partitions))
    remembering = KeyPartitioner(remembered=2)
    for _ in range(2):  # computed, then remembered
        assert remembering(key, every, every) == DefaultPartitioner()(key, every, every)
