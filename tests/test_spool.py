"""The durable spool, on real files: order, restart, torn tails, corruption, size policies."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel import config as config_mod
from sentinel.config import ConfigError, load
from sidecar.config import SidecarConfig
from sidecar.spool import _SCAN_CHUNK, HEADER_SIZE, Spool, SpoolConfig, SpoolFullError, SpoolRecord
from tests.conftest import SidecarFactory


def body_of(seq: int, size: int = 40) -> bytes:
    # Bodies contain the record magic, so resync must rely on the crc, not on the magic alone.
    return (b"LSP1" + seq.to_bytes(4, "little") + bytes(range(256)) * (size // 256 + 1))[:size]


def make(directory: Path, **kw: object) -> Spool:
    settings: dict[str, object] = {"max_bytes": 1 << 20, "segment_bytes": 1 << 16, "fsync": "never"}
    settings.update(kw)
    return Spool(SpoolConfig(directory=str(directory), **settings))  # type: ignore[arg-type]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def fill(spool: Spool, seqs: range, size: int = 40) -> None:
    for seq in seqs:
        assert spool.append(body_of(seq, size), rows=seq + 1, seq=seq) == []


def drain(spool: Spool, limit: int | None = None) -> list[SpoolRecord]:
    out: list[SpoolRecord] = []
    while limit is None or len(out) < limit:
        record = spool.peek()
        if record is None:
            break
        assert spool.peek() == record  # peek does not advance
        assert spool.ack(record)
        out.append(record)
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in segments(directory))


@pytest.fixture
def opened(spool_dir: Path) -> Iterator[Spool]:
    spool = make(spool_dir, segment_bytes=300)
    spool.open()
    yield spool
    spool.close()


def test_round_trip_in_order_across_segments(opened: Spool, spool_dir: Path) -> None:
    fill(opened, range(30))
    assert len(segments(spool_dir)) > 3
    assert all(p.stat().st_size <= 300 for p in segments(spool_dir))
    assert opened.pending_records == 30
    assert opened.pending_rows == sum(range(1, 31))
    records = drain(opened)
    assert [r.seq for r in records] == list(range(30))
    assert [r.body for r in records] == [body_of(s) for s in range(30)]
    assert [r.rows for r in records] == list(range(1, 31))
    assert opened.pending_records == 0 and opened.pending_rows == 0
    assert segments(spool_dir) == [] and opened.bytes_used == 0


def test_appends_interleaved_with_reads(opened: Spool) -> None:
    seen = []
    for seq in range(50):
        opened.append(body_of(seq), rows=1, seq=seq)
        if seq % 3 == 0:
            seen += [r.seq for r in drain(opened, limit=2)]
    seen += [r.seq for r in drain(opened)]
    assert seen == list(range(50))


def test_restart_resumes_from_cursor(spool_dir: Path) -> None:
    spool = make(spool_dir, segment_bytes=300)
    spool.open()
    fill(spool, range(20))
    first = drain(spool, limit=7)
    spool.close()

    spool = make(spool_dir, segment_bytes=300)
    report = spool.open()
    assert (report.pending_records, report.records_skipped, report.bytes_truncated) == (13, 0, 0)
    assert report.pending_rows == sum(range(8, 21)) == spool.pending_rows
    assert not report.cursor_reset
    second = drain(spool, limit=5)
    fill(spool, range(20, 25))
    spool.close()

    spool = make(spool_dir, segment_bytes=300)
    assert spool.open().pending_records == 13
    rest = drain(spool)
    spool.close()
    assert [r.seq for r in first + second + rest] == list(range(25))


def test_peeked_but_unacked_record_is_delivered_again_after_restart(spool_dir: Path) -> None:
    spool = make(spool_dir)
    spool.open()
    fill(spool, range(3))
    assert spool.peek() is not None
    spool.close()
    spool.open()
    assert [r.seq for r in drain(spool)] == [0, 1, 2]
    spool.close()


def write_three(directory: Path, size: int = 50) -> int:
    spool = make(directory)
    spool.open()
    fill(spool, range(3), size=size)
    spool.close()
    return HEADER_SIZE + size


@pytest.mark.parametrize("acked", [0, 1])
def test_torn_tail_at_every_cut_point(tmp_path: Path, acked: int) -> None:
    pristine = tmp_path / "pristine"
    record_size = write_three(pristine)
    if acked:
        spool = make(pristine)
        spool.open()
        drain(spool, limit=acked)
        spool.close()
    (segment,) = segments(pristine)
    full = segment.stat().st_size
    for kept in range(record_size):  # bytes of the last record that reached the disk
        work = tmp_path / f"cut{kept}"
        shutil.copytree(pristine, work)
        with open(work / segment.name, "r+b") as f:
            f.truncate(full - record_size + kept)
        spool = make(work)
        report = spool.open()
        assert report.bytes_truncated == kept, kept
        assert report.pending_records == 2 - acked
        assert report.records_skipped == 0
        assert report.last_seq == (2 if acked else 1)  # an ack wrote last_seq 2 into the cursor
        assert spool.bytes_used == disk_bytes(work) == full - record_size
        spool.append(b"after the crash", rows=1, seq=3)
        assert [(r.seq, r.body) for r in drain(spool)] == [(s, body_of(s, 50)) for s in range(acked, 2)] + [
            (3, b"after the crash")
        ]
        spool.close()


def test_flipped_byte_in_middle_record_skips_only_that_record(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    spool = make(pristine)
    spool.open()
    fill(spool, range(5), size=30)
    spool.close()
    record_size = HEADER_SIZE + 30
    (segment,) = segments(pristine)
    data = segment.read_bytes()
    for i in range(2 * record_size, 3 * record_size):  # every byte of record 2: header and body
        work = tmp_path / f"flip{i}"
        work.mkdir()
        shutil.copy(pristine / "cursor", work / "cursor")
        corrupt = bytearray(data)
        corrupt[i] ^= 0x41
        (work / segment.name).write_bytes(bytes(corrupt))
        spool = make(work)
        report = spool.open()
        assert (report.pending_records, report.records_skipped, report.bytes_truncated) == (4, 1, 0), i
        records = drain(spool)
        assert [r.seq for r in records] == [0, 1, 3, 4], i
        assert all(r.body == body_of(r.seq, 30) for r in records)
        spool.close()


def test_resync_finds_a_header_straddling_two_read_chunks(spool_dir: Path) -> None:
    spool = make(spool_dir, segment_bytes=1 << 18)
    spool.open()
    # The search for the next header starts at byte 1 and reads _SCAN_CHUNK bytes: put the
    # next record's magic across the end of that first chunk.
    spool.append(bytes(_SCAN_CHUNK - 1 - HEADER_SIZE), rows=1, seq=0)
    fill(spool, range(1, 3))
    spool.close()
    (segment,) = segments(spool_dir)
    data = bytearray(segment.read_bytes())
    data[0] ^= 0xFF
    segment.write_bytes(bytes(data))
    report = spool.open()
    assert (report.pending_records, report.records_skipped) == (2, 1)
    assert [r.seq for r in drain(spool)] == [1, 2]
    spool.close()


def test_corrupt_record_at_the_end_of_an_older_segment(spool_dir: Path) -> None:
    spool = make(spool_dir, segment_bytes=3 * (HEADER_SIZE + 40))
    spool.open()
    fill(spool, range(9))
    spool.close()
    first = segments(spool_dir)[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # last body byte of seq 2
    first.write_bytes(bytes(data))
    report = spool.open()
    assert (report.pending_records, report.records_skipped) == (8, 1)
    assert [r.seq for r in drain(spool)] == [0, 1, 3, 4, 5, 6, 7, 8]
    spool.close()


def test_corrupt_or_missing_cursor_starts_from_oldest_segment(spool_dir: Path) -> None:
    spool = make(spool_dir, segment_bytes=3 * (HEADER_SIZE + 40))
    spool.open()
    fill(spool, range(9))
    drain(spool, limit=4)  # deletes the first segment, 1 of 3 read in the second
    spool.close()
    cursor = spool_dir / "cursor"
    cursor.write_bytes(cursor.read_bytes()[:-1] + b"\x00")
    report = spool.open()
    assert report.cursor_reset
    assert [r.seq for r in drain(spool)] == [3, 4, 5, 6, 7, 8]  # at least once: seq 3 again
    assert spool.last_seq == 8
    spool.close()

    spool.open()
    fill(spool, range(9, 11))
    spool.close()
    cursor.unlink()
    report = spool.open()
    assert report.cursor_reset and report.pending_records == 2
    spool.close()


def test_junk_files_are_ignored(spool_dir: Path) -> None:
    spool_dir.mkdir()
    (spool_dir / "notes.txt").write_text("hello")
    (spool_dir / "1.seg").write_bytes(b"not a segment name")
    (spool_dir / "00000000000000000099.seg.bak").write_bytes(b"junk")
    (spool_dir / "00000000000000000000.seg").mkdir()
    spool = make(spool_dir)
    report = spool.open()
    assert report.pending_records == 0 and spool.peek() is None
    fill(spool, range(3))
    assert [r.seq for r in drain(spool)] == [0, 1, 2]
    spool.close()
    assert (spool_dir / "notes.txt").read_text() == "hello"


def test_segment_of_garbage_is_skipped(spool_dir: Path) -> None:
    spool = make(spool_dir, segment_bytes=2 * (HEADER_SIZE + 40))
    spool.open()
    fill(spool, range(6))
    spool.close()
    middle = segments(spool_dir)[1]
    middle.write_bytes(b"\x00LSP1garbage" * 20)
    report = spool.open()
    assert report.pending_records == 4 and report.records_skipped == 1
    assert [r.seq for r in drain(spool)] == [0, 1, 4, 5]
    spool.close()


def test_drop_oldest_accounting(spool_dir: Path) -> None:
    record = HEADER_SIZE + 40
    spool = make(spool_dir, max_bytes=10 * record, segment_bytes=3 * record)
    spool.open()
    dropped = []
    for seq in range(40):
        dropped += spool.append(body_of(seq), rows=seq + 1, seq=seq)
        assert spool.bytes_used == disk_bytes(spool_dir) <= 10 * record
        assert spool.pending_records == seq + 1 - len(dropped)
        assert spool.pending_rows == sum(range(1, seq + 2)) - sum(d.rows for d in dropped)
    delivered = drain(spool)
    spool.close()
    assert [d.seq for d in dropped] + [r.seq for r in delivered] == list(range(40))
    assert sum(d.rows for d in dropped) + sum(r.rows for r in delivered) == sum(range(1, 41))
    assert len(delivered) >= 10 - 3  # whole segments are dropped, never more than needed


def test_ack_of_a_record_dropped_meanwhile_is_a_no_op(spool_dir: Path) -> None:
    record_size = HEADER_SIZE + 40
    spool = make(spool_dir, max_bytes=4 * record_size, segment_bytes=2 * record_size)
    spool.open()
    fill(spool, range(4))
    in_flight = spool.peek()
    assert in_flight is not None and in_flight.seq == 0
    assert [d.seq for d in spool.append(body_of(4), rows=1, seq=4)] == [0, 1]
    assert spool.ack(in_flight) is False
    assert [r.seq for r in drain(spool)] == [2, 3, 4]
    spool.close()


def test_ack_requires_the_peeked_record(opened: Spool) -> None:
    fill(opened, range(3))
    first = opened.peek()
    assert first is not None
    forged = first._replace(position=first.position._replace(offset=first.position.offset + HEADER_SIZE + 40))
    with pytest.raises(ValueError):
        opened.ack(forged)
    assert opened.ack(first)
    assert opened.ack(first) is False  # already acknowledged
    assert [r.seq for r in drain(opened)] == [1, 2]


def test_refuse_raises_and_writes_nothing(spool_dir: Path) -> None:
    record = HEADER_SIZE + 40
    spool = make(spool_dir, max_bytes=6 * record, segment_bytes=2 * record, full_policy="refuse")
    spool.open()
    fill(spool, range(6))
    before = {p.name: p.read_bytes() for p in spool_dir.iterdir()}
    with pytest.raises(SpoolFullError):
        spool.append(body_of(6), rows=7, seq=6)
    assert {p.name: p.read_bytes() for p in spool_dir.iterdir()} == before
    assert (spool.pending_records, spool.last_seq, spool.bytes_used) == (6, 5, 6 * record)
    drain(spool, limit=2)  # frees the first segment
    spool.append(body_of(6), rows=7, seq=6)
    assert [r.seq for r in drain(spool)] == [2, 3, 4, 5, 6]
    spool.close()


def test_last_seq_survives_restart(spool_dir: Path) -> None:
    spool = make(spool_dir)
    assert spool.open().last_seq is None and spool.last_seq is None
    fill(spool, range(5))
    assert spool.last_seq == 4
    spool.close()
    assert spool.open().last_seq == 4
    drain(spool)  # everything acknowledged: no segment left to read it from
    spool.close()
    assert segments(spool_dir) == []
    assert spool.open().last_seq == 4
    spool.append(b"x", rows=1, seq=2)  # the maximum, not the latest
    assert spool.last_seq == 4
    spool.close()


def test_bytes_used_tracks_the_files(spool_dir: Path) -> None:
    spool = make(spool_dir, segment_bytes=200)
    spool.open()
    assert spool.bytes_used == 0
    for seq in range(12):
        spool.append(body_of(seq, 10 + seq), rows=1, seq=seq)
        assert spool.bytes_used == disk_bytes(spool_dir)
    while spool.peek() is not None:
        record = spool.peek()
        assert record is not None
        spool.ack(record)
        assert spool.bytes_used == disk_bytes(spool_dir)
    spool.close()
    spool.open()
    assert spool.bytes_used == disk_bytes(spool_dir) == 0
    spool.close()


def test_oversize_record_is_refused(spool_dir: Path) -> None:
    spool = make(spool_dir, max_bytes=1000, segment_bytes=500)
    spool.open()
    spool.append(b"x" * (1000 - HEADER_SIZE), rows=1, seq=0)  # exactly max_bytes fits
    with pytest.raises(ValueError, match=r"larger than spool\.max_bytes"):
        spool.append(b"x" * (1001 - HEADER_SIZE), rows=1, seq=1)
    with pytest.raises(ValueError):
        spool.append(b"x", rows=-1, seq=1)
    assert spool.pending_records == 1 and spool.bytes_used == disk_bytes(spool_dir) == 1000
    spool.close()


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_every_fsync_policy_round_trips(spool_dir: Path, fsync: str) -> None:
    spool = make(spool_dir, fsync=fsync, fsync_interval_s=0.001, segment_bytes=200)
    spool.open()
    fill(spool, range(10))
    drain(spool, limit=3)
    spool.sync()
    spool.close()
    spool.open()
    assert [r.seq for r in drain(spool)] == list(range(3, 10))
    spool.close()


def test_close_is_idempotent_and_closed_spool_refuses_work(spool_dir: Path) -> None:
    spool = make(spool_dir)
    spool.close()  # never opened
    spool.open()
    with pytest.raises(RuntimeError):
        spool.open()
    fill(spool, range(2))
    spool.close()
    spool.close()
    with pytest.raises(RuntimeError):
        spool.append(b"x", rows=1, seq=9)
    with pytest.raises(RuntimeError):
        spool.peek()


@pytest.mark.parametrize(
    ("change", "key"),
    [
                ({"max_bytes": 0}, "spool.max_bytes"),
        ({"segment_bytes": 0}, "spool.segment_bytes"),
        ({"segment_bytes": 2 << 20}, "spool.segment_bytes"),
        ({"full_policy": "block"}, "spool.full_policy"),
        ({"fsync": "sometimes"}, "spool.fsync"),
        ({"fsync_interval_s": 0}, "spool.fsync_interval_s"),
    ],
)
def test_config_validation_names_the_key(tmp_path: Path, change: dict[str, object], key: str) -> None:
    settings: dict[str, object] = {"directory": str(tmp_path), "max_bytes": 1 << 20, "segment_bytes": 1 << 16}
    settings.update(change)
    with pytest.raises(ConfigError, match=f"^{key}:"):
        SpoolConfig(**settings).validate()  # type: ignore[arg-type]


def test_a_second_opener_is_refused(tmp_path: Path) -> None:
    from sidecar.spool import SpoolLockedError

    first = Spool(SpoolConfig(directory=str(tmp_path)))
    first.open()
    second = Spool(SpoolConfig(directory=str(tmp_path)))
    with pytest.raises(SpoolLockedError, match="in use by another process"):
        second.open()
    first.close()
    second.open()  # released on close
    second.close()


def test_a_spool_needs_a_directory() -> None:
    # The section's empty directory means "no spool" to the sidecar; a Spool itself cannot do without one.
    SpoolConfig().validate()
    with pytest.raises(ConfigError, match=r"^spool\.directory: required"):
        Spool(SpoolConfig())


def test_a_spool_on_its_own_fsyncs_every_batch(tmp_path: Path) -> None:
    assert Spool(SpoolConfig(directory=str(tmp_path))).config.fsync == "always"


SAF = {"mode": "store-and-forward", "aggregator_url": "http://127.0.0.1:9"}


@pytest.mark.parametrize(("settings", "fsync"), [
    (SAF, "always"),  # acknowledged means on disk: weakening this default loses acknowledged rows on a crash
    ({}, "interval"),  # sidecar mode: the spool is only an overflow
    ({**SAF, "spool.fsync": "interval"}, "interval"),
    ({"spool.fsync": "always"}, "always"),
])
def test_the_fsync_policy_is_chosen_by_the_mode_unless_set(tmp_path: Path, settings: dict[str, str],
                                                           fsync: str) -> None:
    c = load(SidecarConfig, data={"spool": {"directory": str(tmp_path)}, **settings}, env={})
    assert c.effective_spool.fsync == fsync
    assert c.spool.fsync == settings.get("spool.fsync", "")


async def test_a_store_and_forward_sidecar_opens_its_spool_fsyncing_every_batch(
        make_sidecar: SidecarFactory, tmp_path: Path) -> None:
    sc = await make_sidecar(**SAF, spool={"directory": str(tmp_path / "spool")})
    assert sc.spool is not None and sc.spool.config.fsync == "always"


@pytest.fixture
def _fresh_warnings() -> Iterator[None]:
    config_mod._warned.clear()
    yield
    config_mod._warned.clear()


@pytest.mark.usefixtures("_fresh_warnings")
def test_the_flat_spool_keys_are_deprecated_aliases(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text("spool_dir: /var/spool/a\nspool_fsync: never\nspool_max_bytes: 16MiB\n")
    with caplog.at_level(logging.WARNING, logger="sentinel.config"):
        c = load(SidecarConfig, config_file=cfg, env={"SENTINEL_SPOOL_FSYNC_INTERVAL_S": "2s"})
    assert (c.spool.directory, c.spool.fsync, c.spool.max_bytes, c.spool.fsync_interval_s) == (
        "/var/spool/a", "never", 16 << 20, 2.0)
    assert "setting spool_dir is deprecated: use spool.directory" in caplog.text
    assert load(SidecarConfig, env={"SENTINEL_SPOOL_DIR": "/b"}).spool.directory == "/b"
    assert load(SidecarConfig, args={"spool_dir": "/c"}, env={}).spool.directory == "/c"
    with pytest.raises(ConfigError, match=r"^spool\.directory: given twice"):
        load(SidecarConfig, data={"spool_dir": "/a", "spool": {"directory": "/b"}}, env={})
    with pytest.raises(ConfigError, match=r"^spool\.directory: given twice"):
        load(SidecarConfig, env={"SENTINEL_SPOOL_DIR": "/a", "SENTINEL_SPOOL_DIRECTORY": "/b"})
