"""The durable spool: order, durability across reopen, torn records, the bound and its alarm, slots."""

from __future__ import annotations

import logging

from ihe.audit.spool import Spool


def _record(text: str):
    return lambda origin, seq: f"{origin}/{seq}/{text}".encode()


def test_records_come_back_in_order_until_acknowledged(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    spool.open()
    seqs = [spool.append(_record(f"r{i}")) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert [p.split(b"/")[2] for _, p in spool.pending(10)] == [b"r0", b"r1", b"r2", b"r3", b"r4"]
    spool.ack(3)
    assert [s for s, _ in spool.pending(10)] == [4, 5]
    origin = spool.origin
    spool.close()

    again = Spool(tmp_path / "s", max_bytes=1 << 20)
    again.open()
    assert again.origin == origin  # the identity the repository deduplicates by survives restarts
    assert [s for s, _ in again.pending(10)] == [4, 5]
    assert again.append(_record("r5")) == 6
    again.ack(6)
    assert len(again) == 0 and again.pending_bytes == 0
    again.close()


def test_a_record_torn_by_a_crash_is_cut_off(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    spool.open()
    for i in range(3):
        spool.append(_record(f"r{i}"))
    segment = spool._segment
    spool.close()
    with open(segment, "ab") as fh:
        fh.write(b"R\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x01\x00half")  # header promising 256 bytes
    again = Spool(tmp_path / "s", max_bytes=1 << 20)
    again.open()
    assert [s for s, _ in again.pending(10)] == [1, 2, 3]
    assert again.append(_record("r3")) == 4
    assert again.pending(10)[-1][1].endswith(b"/r3")
    again.close()


def test_full_spool_refuses_and_raises_the_alarm(tmp_path, caplog):
    spool = Spool(tmp_path / "s", max_bytes=300)
    spool.open()
    while spool.has_room():
        spool.append(_record("x" * 50))
    with caplog.at_level(logging.ERROR, logger="ihe.audit.spool"):
        assert not spool.has_room()
    assert any("ALARM" in r.message and "full" in r.message for r in caplog.records)
    spool.ack(spool.next_seq - 1)
    assert spool.has_room()
    spool.close()


def test_acknowledged_segments_are_deleted(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=100)
    spool.open()
    for i in range(20):
        spool.append(_record(f"r{i}"))
    assert len(list((tmp_path / "s").glob("*.seg"))) > 3
    spool.ack(20)
    assert len(list((tmp_path / "s").glob("*.seg"))) <= 1
    spool.close()


def test_each_process_gets_its_own_slot_and_a_restart_takes_it_over(tmp_path):
    a = Spool.open_slot(tmp_path, max_bytes=1 << 20)
    b = Spool.open_slot(tmp_path, max_bytes=1 << 20)
    assert a.folder != b.folder and a.origin != b.origin
    a.append(_record("left behind"))
    origin = a.origin
    a.close()
    c = Spool.open_slot(tmp_path, max_bytes=1 << 20)
    assert c.origin == origin and len(c) == 1
    b.close()
    c.close()


def test_concurrent_appends_share_fsyncs_and_all_survive_reopen(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    spool = Spool(tmp_path / "s", max_bytes=1 << 24, segment_bytes=4096)
    spool.open()
    with ThreadPoolExecutor(8) as pool:
        seqs = list(pool.map(lambda i: spool.append(_record(f"r{i}")), range(800)))
    assert sorted(seqs) == list(range(1, 801))
    spool.close()
    again = Spool(tmp_path / "s", max_bytes=1 << 24)
    again.open()
    pending = again.pending(1000)
    assert [s for s, _ in pending] == list(range(1, 801))
    assert sorted(int(p.split(b"/r")[1]) for _, p in pending) == list(range(800))
    again.close()


def test_acknowledgements_not_yet_on_disk_resend_but_never_reuse_a_sequence_number(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=64)
    spool.open()
    for i in range(10):
        spool.append(_record(f"r{i}"))
    spool.ack(2, persist=True)
    spool.ack(9)  # within ACK_PERSIST_INTERVAL: in memory only
    assert [s for s, _ in spool.pending(10)] == [10]
    # a crash now: the lock goes with the process, nothing else is written
    spool._lock_fh.close()
    spool._lock_fh = None
    again = Spool(tmp_path / "s", max_bytes=1 << 20)
    again.open()
    assert [s for s, _ in again.pending(20)] == list(range(3, 11))  # resent; the repository drops duplicates
    assert again.append(_record("new")) == 11
    again.close()
