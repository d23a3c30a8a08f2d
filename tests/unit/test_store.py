"""Every stored record round-trips through its one codec, and refuses what is not one."""

from __future__ import annotations

import numpy as np
import pytest
from redis.exceptions import ResponseError

from modelgate.core.store import FAMILIES, heartbeats, is_bad_data, pools, replies, scaling
from modelgate.core.store import drift as drift_store


def as_stored(items: list[bytes | str | int]) -> dict[bytes, bytes]:
    """Name/value items as Redis hands them back: bytes for both."""
    def raw(value: bytes | str | int) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()
    return {raw(n): raw(v) for n, v in zip(items[::2], items[1::2], strict=True)}


def test_request_entry_round_trip() -> None:
    entry = pools.RequestEntry(("1", "22", "x-3"), replies.reply_list("gw"), 2500, 2, b"\x81")
    assert pools.RequestEntry.parse(as_stored(entry.fields())) == entry


def test_request_entry_carries_what_each_answer_is_stored_under() -> None:
    entry = pools.RequestEntry(("1", "2", "3"), replies.reply_list("gw"), 2500, 1, b"\x81",
                               b"", ("call,with comma", "", "é"))
    fields = entry.fields()
    assert fields[-2:] == ["payload", b"\x81"]  # still last: a gateway writes it on its own
    assert pools.RequestEntry.parse(as_stored(fields)) == entry
    # None asked: no field at all, as an entry of an earlier release has none.
    assert b"store" not in as_stored(pools.RequestEntry(("1",), "r", 5, 1, b"").fields())


@pytest.mark.parametrize("raw", [b"\xc1", b"\x92\xa1a\xa1b", b"\x91\x01", b"\x81\xa1a\x01",
                                 b"\x91\x91\xa1a"], ids=repr)
def test_a_malformed_store_field_stores_nothing_and_fails_no_call(raw: bytes) -> None:
    """Not msgpack, a list of the wrong length, not strings, not a list: no key at all."""
    fields = as_stored(pools.RequestEntry(("1",), "r", 5, 1, b"\x80").fields())
    fields[b"store"] = raw
    assert pools.RequestEntry.parse(fields).store == ()


@pytest.mark.parametrize("missing", [b"ids", b"reply_to", b"budget_ms"])
def test_request_entry_without_a_required_field_is_refused(missing: bytes) -> None:
    fields = as_stored(pools.RequestEntry(("1",), "r", 5, 1, b"").fields())
    del fields[missing]
    with pytest.raises(pools.EntryError, match=missing.decode()):
        pools.RequestEntry.parse(fields)


def test_a_previous_release_entry_is_refused_by_name() -> None:
    """Release 0.1 wrote an absolute ``deadline_ms``; its entries are never misread."""
    old = {b"ids": b"1", b"reply_to": b"mg:replies:g", b"deadline_ms": b"1700000000000",
           b"attempt": b"1", b"payload": b""}
    with pytest.raises(pools.EntryError, match="budget_ms"):
        pools.RequestEntry.parse(old)


@pytest.mark.parametrize("raw", [b"", b"1,,2", b",1", b"1,", b"\xff\xfe"], ids=repr)
def test_ids_field_without_an_id_everywhere_is_rejected(raw: bytes) -> None:
    with pytest.raises(pools.EntryError):
        pools.decode_ids(raw)


def test_ids_field_round_trip() -> None:
    assert pools.decode_ids(pools.encode_ids(("1", "22", "x-3")).encode()) == ("1", "22", "x-3")
    assert pools.decode_ids(b"7") == ("7",)


@pytest.mark.parametrize(("fields", "attempt"), [
    ({}, 1), ({b"attempt": b"1"}, 1), ({b"attempt": b"3"}, 3), ({b"attempt": b""}, 1),
    ({b"attempt": b"three"}, 1), ({b"attempt": b"2.5"}, 1), ({b"attempt": b"0"}, 1),
    ({b"attempt": b"-4"}, 1),
], ids=repr)
def test_entry_attempt_defaults_to_1(fields: dict[bytes, bytes], attempt: int) -> None:
    assert pools.attempt_of(fields) == attempt


def test_entry_time_is_the_stream_id_milliseconds() -> None:
    assert pools.entry_time_ms(b"1700000000123-7") == 1700000000123
    assert pools.entry_time_ms("5-0") == 5


def test_dead_letter_round_trip() -> None:
    original = {b"ids": b"9", b"payload": b"\x00\x01"}
    letter = pools.DeadLetter(original, b"17-0", 4, 1234)
    assert pools.DeadLetter.parse(as_stored(letter.items())) == letter


def test_pool_keys_are_typed_so_models_cannot_collide() -> None:
    pool = pools.pool_id("autoscaler", "1")
    assert pools.requests_stream(pool) == "mg:pool:autoscaler:1:requests"
    assert pools.requests_stream(pool) != scaling.EVENTS
    assert pools.pool_of_stream(pools.requests_stream(pool)) == pool
    assert heartbeats.heartbeat("w1") == "mg:worker:w1"


@pytest.mark.parametrize(("raw", "count"), [(None, 0), (b"7", 7), (b"-3", 0), (b"abc", 0)])
def test_queued_count_is_never_negative_or_malformed(raw: bytes | None, count: int) -> None:
    assert pools.queued_count(raw) == count


def test_gauges_from_results_in_queue_order() -> None:
    assert pools.gauges_from([2, 1, 30, b"4"]) == pools.PoolGauges(2, 1, 30, 4)
    assert pools.gauges_from([0, 0, None, None]) == pools.PoolGauges(0, 0, 0, None)
    assert pools.gauges_from([0, 0, 0, b"abc"]).desired is None


@pytest.mark.parametrize("raw", [b"abc", b"-1", b"1" + b"0" * 400, b"1" * 5000, b"2.5"],
                         ids=["text", "negative", "past-a-float", "past-int-parsing", "fraction"])
def test_a_desired_value_that_is_no_worker_count_is_absent_and_a_problem(raw: bytes) -> None:
    """10**400 workers was an int, and overflowed the float of a metric (issue 12)."""
    problems: list[str] = []
    assert pools.gauges_from([1, 0, 0, raw], problems) == pools.PoolGauges(1, 0, 0, None)
    assert len(problems) == 1 and problems[0].startswith("desired:")


def test_refused_reads_are_absent_and_named() -> None:
    refused = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    problems: list[str] = []
    assert pools.gauges_from([refused, 2, refused, b"3"], problems) == pools.PoolGauges(
        0, 2, 0, 3)
    assert [p.split(":")[0] for p in problems] == ["workers", "queued"]


def test_store_tells_bad_data_from_a_server_not_serving() -> None:
    assert is_bad_data(ResponseError("WRONGTYPE Operation against a key holding the wrong "
                                     "kind of value"))
    assert is_bad_data(ResponseError("ERR hash value is not an integer"))
    assert not is_bad_data(ResponseError("LOADING Redis is loading the dataset in memory"))
    assert not is_bad_data(ResponseError("OOM command not allowed when used memory > "
                                         "'maxmemory'."))


def test_heartbeat_round_trip() -> None:
    beat = heartbeats.Heartbeat("mlp:1", 4242, "host-a", 1700000000.5, 31, 0.25)
    stored = {str(k).encode(): str(v).encode() for k, v in beat.fields().items()}
    assert heartbeats.Heartbeat.parse(stored) == beat


def test_heartbeats_with_and_without_the_job_lane_counters_read_both_ways() -> None:
    beat = heartbeats.Heartbeat("mlp:1", 4242, "host-a", 1700000000.5, 31, 0.25, "ab",
                                job_rows=512, job_chunks=2, job_failed_rows=1, job_busy=0.125)
    stored = {str(k).encode(): str(v).encode() for k, v in beat.fields().items()}
    assert heartbeats.Heartbeat.parse(stored) == beat
    # A worker of the previous release writes no job counters: they read as none.
    earlier = {k: v for k, v in stored.items() if not k.startswith(b"job_")}
    parsed = heartbeats.Heartbeat.parse(earlier)
    assert parsed is not None and parsed.processed == 31 and parsed.job_rows == 0


def test_heartbeat_missing_a_field_is_none() -> None:
    assert heartbeats.Heartbeat.parse({b"pool": b"mlp:1"}) is None


def test_reply_lists_are_recognised_and_nothing_else() -> None:
    assert replies.is_reply_list(replies.reply_list("gw-1"))
    assert not replies.is_reply_list(replies.PREFIX_REPLIES)
    assert not replies.is_reply_list(pools.requests_stream("mlp:1"))


def test_scaling_event_round_trip() -> None:
    event = scaling.ScalingEvent(time=1700000000.25, pool="mlp:1", current=1, desired=3,
                                 reason="backlog", raw=3, capped=True, panic=True, backlog=40,
                                 arrival_rate=12.5, completion_rate=10.0, p95_ms=80.5,
                                 service_ms=2.25, live=1, starting=1, cost_per_hour=3.0)
    stored = {k.encode(): str(v).encode() for k, v in event.fields().items()}
    assert scaling.ScalingEvent.parse(stored) == event


def test_scaling_event_without_figures_round_trips_as_none() -> None:
    event = scaling.ScalingEvent(time=1.0, pool="p:1", current=0, desired=0, reason="idle")
    stored = {k.encode(): str(v).encode() for k, v in event.fields().items()}
    parsed = scaling.ScalingEvent.parse(stored)
    assert parsed is not None and parsed.p95_ms is None and parsed.cost_per_hour is None


def test_drift_batch_round_trip() -> None:
    batch = drift_store.DriftBatch(12.5, (16, 4), np.arange(6.0).reshape(2, 3),
                                   ((1, 2), (3, 4), (5, 6), (7, 0)), (1.0, 2.0, 3.0, 0.0),
                                   (4.0, 5.0, 6.0, 0.0))
    decoded = drift_store.DriftBatch.decode(batch.encode())
    assert decoded.rows == 20
    assert np.array_equal(decoded.z, batch.z)
    assert (decoded.chunk_rows, decoded.bins, decoded.sums, decoded.squares, decoded.time) == (
        batch.chunk_rows, batch.bins, batch.sums, batch.squares, batch.time)


@pytest.mark.parametrize("raw", [b"\xc1", b"\x93\x01\x02\x03", b"\x81\xa1v\x02"], ids=repr)
def test_drift_batch_of_another_format_is_refused(raw: bytes) -> None:
    with pytest.raises(drift_store.DriftRecordError):
        drift_store.DriftBatch.decode(raw)


def test_drift_batch_whose_z_does_not_fit_is_refused() -> None:
    good = drift_store.DriftBatch(1.0, (2,), np.zeros((1, 1)), ((1,),), (0.0,), (0.0,))
    import msgpack
    message = msgpack.unpackb(good.encode())
    message["z"] = b"\x00" * 12
    with pytest.raises(drift_store.DriftRecordError, match="z"):
        drift_store.DriftBatch.decode(msgpack.packb(message))


def test_drift_alert_round_trip() -> None:
    alert = drift_store.DriftAlert("input[0]", "cusum", 9.5, 7.25, 512, 1700000000.125)
    stored = {k.encode(): v.encode() for k, v in alert.fields().items()}
    assert drift_store.DriftAlert.parse(stored) == alert


def test_every_family_is_a_module() -> None:
    import importlib
    for family in FAMILIES:
        module = importlib.import_module(f"modelgate.core.store.{family}")
        assert module.__doc__
