"""Cache folders: built privately and renamed into place; what killed builds leave is removed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from microcond.data.ragged import remove_stale_staging, staged


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_left_by_a_killed_build_is_removed_and_live_ones_are_kept(tmp_path):
    dead = tmp_path / f".pixels-0123abcd.tmp{_dead_pid()}"
    live = tmp_path / ".latents-0123abcd.tmp1"  # pid 1 always runs
    mine = tmp_path / f".text-0123abcd.tmp{os.getpid()}"
    other = tmp_path / ".tmp-keep"
    for folder in (dead, live, mine, other):
        folder.mkdir()
        (folder / "pixels.npy").write_bytes(b"x" * 100)
    assert remove_stale_staging(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and mine.exists() and other.exists()


def test_staged_publishes_on_success_and_removes_its_folder_on_failure(tmp_path):
    with staged(tmp_path, "pixels-aa", "meta.json") as tmp:
        (tmp / "meta.json").write_text("{}")
    assert (tmp_path / "pixels-aa" / "meta.json").is_file()
    with pytest.raises(OSError, match="No space"):
        with staged(tmp_path, "pixels-bb", "meta.json") as tmp:
            (tmp / "pixels.npy").write_bytes(b"x")
            raise OSError(28, "No space left on device")
    with pytest.raises(KeyboardInterrupt):
        with staged(tmp_path, "pixels-cc", "meta.json"):
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pixels-aa"]


def test_a_pixel_cache_build_clears_a_killed_builds_folder(tmp_path, image_folder):
    from microcond.data.buckets import parse_buckets
    from microcond.data.loader import open_source
    from microcond.data.pixelcache import PixelCache

    cache = tmp_path / "cache"
    cache.mkdir()
    killed = cache / f".pixels-deadbeef.tmp{_dead_pid()}"
    killed.mkdir()
    (killed / "pixels.npy").write_bytes(b"\0" * 4096)
    source = open_source(image_folder, cache_dir=cache)
    built = PixelCache.build(source, parse_buckets("square:16"), cache, processes=1, progress=False)
    assert built.folder.parent == cache and (built.folder / "meta.json").is_file()
    assert not killed.exists() and not [p for p in cache.iterdir() if ".tmp" in p.name]


def test_ragged_arrays_hold_rows_of_any_shape_failures_and_side_arrays(tmp_path):
    import pickle

    import numpy as np

    from microcond.data.ragged import RaggedArrays

    shapes = [(2, 3), (1, 5), (4, 1)]
    rows = [np.arange(np.prod(s), dtype=np.float16).reshape(s) + k for k, s in enumerate(shapes)]
    with RaggedArrays.create(tmp_path, "demo-abc", shapes, np.float16) as cache:
        for k in (0, 2):
            cache.row(k)[...] = rows[k]
        cache.fail(1, "b.png", "not an image")
        cache.arrays["side"] = np.arange(3)
        cache.finish({"key": "abc"})
    store = RaggedArrays(tmp_path / "demo-abc")
    assert len(store) == 3 and store.key == "abc" and store.failed_rows() == [1] and store.failures == [(1, "b.png", "not an image")]
    assert np.array_equal(store.get(0), rows[0]) and np.array_equal(store.get(2), rows[2]) and store.get(1).shape == (1, 5)
    assert np.array_equal(store.array("side"), np.arange(3)) and store.value_bytes() == 2 * sum(np.prod(s) for s in shapes)
    store.get(0)
    copy = pickle.loads(pickle.dumps(store))  # a loader worker maps the file itself
    assert copy._values is None and np.array_equal(copy.get(2), rows[2])
    with pytest.raises(RuntimeError, match="without finish"):
        with RaggedArrays.create(tmp_path, "demo-def", shapes, np.uint8):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-abc"]
