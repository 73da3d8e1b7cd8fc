"""Hostile inputs: pydicom's own sample files, a corpus of mutated files and a fuzzing run.

The appliance must never crash, every file it cannot use must be quarantined with its
reason, the reader workers must stay inside their memory limit, and a good series sent
in between must still be analysed. The reader on its own, fed mutated bytes, may only
ever return slices or raise DicomError.
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread

from edge.errors import DicomError
from edge.ingest.journal import Journal
from edge.ingest.quarantine import quarantined_files
from edge.ingest.reader import read_file
from edge.simulator import play
from tests.appliance import watch
from tests.factories import (
    PYDICOM_DATA,
    deflate_bomb,
    pydicom_sample_files,
    tiny_series,
    with_header_length,
    with_pixel_length,
)
from tests.mqtt import needs_mosquitto

TORTURE = os.environ.get("SCANSIDE_TORTURE") == "1"
BASES = ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
         "MR_small_jpeg_ls_lossless.dcm"]
WORKER_MEMORY_MB = 768


def mutated_corpus(base: Path, out: Path, rng: random.Random) -> list[Path]:
    """Truncations, bit flips, corrupted length fields and UIDs made from `base`."""
    data = base.read_bytes()
    made = []

    def put(name: str, content: bytes) -> None:
        made.append(out / f"{base.stem}-{name}.dcm")
        made[-1].write_bytes(content)

    for i in range(4):
        put(f"cut{i}", data[:rng.randrange(1, len(data))])
    for i in range(8):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        put(f"flip{i}", bytes(flipped))
    for i in range(4):      # an explicit-VR element header with a long length: huge lengths
        headers = [m for m in range(132, len(data) - 12) if data[m + 4:m + 6] in
                   (b"OB", b"OW", b"UN", b"SQ", b"UT")]
        if headers:
            at = rng.choice(headers) + 8
            put(f"length{i}", data[:at] + struct.pack("<I", rng.choice(
                [0xFFFFFFF0, 0x7FFFFFFF, len(data) * 7, 0xFFFFFFFF])) + data[at + 4:])
    return made


def traversal_uids(source: Path, out: Path) -> list[Path]:
    made = []
    for keyword, value in [("SeriesInstanceUID", "../../../etc/passwd"),
                           ("SOPInstanceUID", "1.2.3/../../../tmp/x"),
                           ("StudyInstanceUID", "1.2.840.10008\x00;rm -rf /")]:
        ds = dcmread(source)
        setattr(ds, keyword, value)
        made.append(out / f"traversal-{keyword}.dcm")
        ds.save_as(made[-1])
    return made


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("hostile")
    rng = random.Random(20261124)
    files = []
    for name in BASES:
        files += mutated_corpus(next(PYDICOM_DATA.rglob(name)), out, rng)
    pet = tiny_series(1, "PT").write(out / "pet")[0]
    files += mutated_corpus(pet, out, rng)
    files += traversal_uids(pet, out)
    files += [deflate_bomb(pet, out / "deflate-bomb.dcm", 4 << 30),
              with_pixel_length(pet, out / "huge-pixels.dcm", 0xFFFFFFF0),
              with_header_length(pet, out / "huge-header.dcm", 0x7FFFFFF0)]
    rng.shuffle(samples := pydicom_sample_files())
    return files + samples[:60]


def child_rss_mb(pid: int) -> list[float]:
    """Resident memory of each direct child of `pid` (the reader workers, among others)."""
    sizes = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                rss = next(line for line in (entry / "status").read_text().splitlines()
                           if line.startswith("VmRSS"))
                sizes.append(int(rss.split()[1]) / 1024)
        except (OSError, ValueError, StopIteration, IndexError):
            continue
    return sizes


@needs_mosquitto
@pytest.mark.broker
@pytest.mark.slow
def test_hostile_files_are_quarantined_and_the_appliance_carries_on(tmp_path, broker,
                                                                     appliance, hostile):
    good = tiny_series(8, "PT")
    good_files = good.write(tmp_path / "good")
    app = appliance(tmp_path / "app", ingest=f"worker_memory_mb = {WORKER_MEMORY_MB}\n"
                                             "incomplete_grace_s = 3\nfile_timeout_s = 10")
    app.start()
    subscriber = watch(broker, app)
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max([peak[0], *child_rss_mb(app.process.pid)])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        hostile_dir = app.inbox / "hostile"
        hostile_dir.mkdir(parents=True)
        for i, path in enumerate(hostile):
            (hostile_dir / f"{i:03d}-{path.name}").write_bytes(path.read_bytes())
        for _ in play(good_files, app.inbox, 20.0, "good"):
            pass
        subscriber.wait_for(lambda s: any(r["series_uid"] == good.identity.series_uid
                                          for r in s.on("/results")), 120)
        journal = Journal(app.state)
        deadline = time.monotonic() + 60            # truncated files wait out their grace
        while time.monotonic() < deadline:
            settled = {e.path for e in journal.entries()}
            if all(str(p) in settled for p in hostile_dir.iterdir()) and \
                    len(settled) >= len(hostile) + len(good_files):
                break
            time.sleep(0.5)
        assert app.process.poll() is None, "the appliance died"
        assert app.terminate() == 0
    finally:
        done.set()
        subscriber.close()
    good_result = next(r for r in subscriber.on("/results")
                       if r["series_uid"] == good.identity.series_uid)
    assert (good_result["status"], good_result["n_slices"]) == ("negative", 8)
    entries = {e.path: e for e in Journal(app.state).entries()}
    quarantined = {q.original_path: q.reason for q in quarantined_files(app.state /
                                                                         "quarantine")}
    for i, path in enumerate(hostile):
        inbox_path = str(hostile_dir / f"{i:03d}-{path.name}")
        entry = entries[inbox_path]
        if entry.status in ("quarantined", "conflict"):
            assert quarantined[inbox_path], inbox_path
            assert not Path(inbox_path).exists()
        else:
            assert entry.status in ("accepted", "duplicate") and Path(inbox_path).exists()
    by_name = {Path(path).name.split("-", 1)[1]: reason for path, reason in quarantined.items()}
    assert "memory" in by_name["deflate-bomb.dcm"] or "inflate" in by_name["deflate-bomb.dcm"]
    for name in ("traversal-SeriesInstanceUID.dcm", "traversal-SOPInstanceUID.dcm",
                 "traversal-StudyInstanceUID.dcm"):
        assert "UID" in by_name[name], by_name[name]
    assert "PixelData" in by_name["huge-pixels.dcm"]
    assert "(0009,1010)" in by_name["huge-header.dcm"]
    assert len(quarantined) >= 40
    assert 0 < peak[0] < WORKER_MEMORY_MB
    print(f"\n{len(hostile)} hostile files: {len(quarantined)} quarantined; "
          f"largest child process {peak[0]:.0f} MB")


def _mutations():
    position = st.integers(min_value=0, max_value=1 << 16)
    flips = st.lists(st.tuples(position, st.integers(1, 255)), min_size=1, max_size=12)
    return st.tuples(st.sampled_from(["tiny_pet", *BASES]), flips,
                     st.one_of(st.none(), position))


@pytest.fixture(scope="module")
def fuzz_bases(tmp_path_factory) -> dict[str, bytes]:
    pet = tiny_series(1, "PT").write(tmp_path_factory.mktemp("fuzz"))[0]
    bases = {name: next(PYDICOM_DATA.rglob(name)).read_bytes() for name in BASES}
    return {"tiny_pet": pet.read_bytes(), **bases}


@settings(max_examples=3000 if TORTURE else 300, deadline=None, derandomize=not TORTURE,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutation=_mutations())
def test_the_reader_fed_mutated_bytes_returns_slices_or_raises_dicom_error(fuzz_bases,
                                                                            mutation):
    name, flips, cut = mutation
    data = bytearray(fuzz_bases[name])
    for at, mask in flips:
        data[at % len(data)] ^= mask
    if cut is not None:
        data = data[:cut % len(data)]
    with tempfile.NamedTemporaryFile(suffix=".dcm") as handle:
        handle.write(bytes(data))
        handle.flush()
        try:
            slices = read_file(handle.name)
        except DicomError as error:
            assert handle.name in str(error)     # the message names the file
        else:
            assert slices and all(s.stored.ndim == 2 for s in slices)
