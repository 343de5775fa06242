"""Atomic writes: readers see a whole file or none, and what a killed writer left behind is cleaned up later."""

from __future__ import annotations

import os
import time

import fsspec

from pipeline.storage import STALE_TMP_S, resolve, write_bytes_atomic


def test_local_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    fs, path = resolve(str(tmp_path / "a" / "b.parquet"))
    write_bytes_atomic(fs, path, b"first")
    write_bytes_atomic(fs, path, b"second")
    assert (tmp_path / "a" / "b.parquet").read_bytes() == b"second"
    assert os.listdir(tmp_path / "a") == ["b.parquet"]


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    stale, fresh, other = (tmp_path / ".b.parquet.dead.tmp", tmp_path / ".b.parquet.live.tmp",
                           tmp_path / ".c.parquet.dead.tmp")
    for leftover in (stale, fresh, other):
        leftover.write_bytes(b"half a file")
    old = time.time() - STALE_TMP_S - 60
    for leftover in (stale, other):
        os.utime(leftover, (old, old))
    fs, path = resolve(str(tmp_path / "b.parquet"))
    write_bytes_atomic(fs, path, b"whole")
    # the stale temporary of this file goes; a recent one (a writer that may still run) and other files' stay
    assert sorted(os.listdir(tmp_path)) == [".b.parquet.live.tmp", ".c.parquet.dead.tmp", "b.parquet"]


def test_object_store_write_holds_the_whole_file_and_nothing_else():
    fs, path = resolve("memory://storage-test/x/y.bin")
    write_bytes_atomic(fs, path, b"data")
    memory = fsspec.filesystem("memory")
    assert memory.cat_file("/storage-test/x/y.bin") == b"data"
    assert memory.find("/storage-test") == ["/storage-test/x/y.bin"]
