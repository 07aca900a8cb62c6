"""metadata.jsonl: one reader for labels, captions and recorded sizes."""

from __future__ import annotations

import json

import pytest

from microcond.data.metadata import captions_of, labels_of, read_metadata


def _write(folder, lines):
    (folder / "metadata.jsonl").write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def test_records_labels_and_captions(tmp_path):
    _write(tmp_path, [{"file": "a/x.png", "label": 2, "original_size": [40, 60]}, "", {"file": "y.jpg", "caption": "a cat"}, {"file": "z.png", "text": "a dog", "label": 0}])
    assert [f for f, _ in read_metadata(tmp_path)] == ["a/x.png", "y.jpg", "z.png"]
    assert labels_of(tmp_path) == {"a/x.png": 2, "z.png": 0}
    assert captions_of(tmp_path) == {"y.jpg": "a cat", "z.png": "a dog"}
    assert list(read_metadata(tmp_path / "absent")) == [] and labels_of(tmp_path / "absent") == {}


@pytest.mark.parametrize("line, message", [
    ("{not json", ":2: not JSON"),
    ("[1, 2]", ":2: expected a JSON object with a string 'file'"),
    ('{"label": 1}', ":2: expected a JSON object with a string 'file'"),
])
def test_a_bad_line_is_named(tmp_path, line, message):
    _write(tmp_path, [{"file": "a.png", "label": 1}, line])
    with pytest.raises(ValueError, match=message):
        labels_of(tmp_path)


def test_a_record_without_label_or_caption_is_an_error(tmp_path):
    _write(tmp_path, [{"file": "a.png", "label": 1}, {"file": "b.png"}])
    with pytest.raises(ValueError, match="integer 'label' for 'b.png', got None"):
        labels_of(tmp_path)
    _write(tmp_path, [{"file": "a.png", "label": "cat"}])
    with pytest.raises(ValueError, match="got 'cat'"):
        labels_of(tmp_path)
