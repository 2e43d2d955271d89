"""The model-root check of warmup prefixes (coordinator/prefixes.py)."""

from __future__ import annotations

from coordinator.prefixes import too_high, version_folders


def test_a_model_root_shows_its_version_folders() -> None:
    keys = ["tiny-llm/v1/config.json", "tiny-llm/v10/a.bin", "tiny-llm/v2/config.json",
            "tiny-llm/v2/weights/x.bin", "tiny-llm/docs/readme.md"]
    assert version_folders("tiny-llm/", keys) == ["v1", "v2", "v10"]
    msg = too_high("models", "tiny-llm/", ["v1", "v2", "v10"])
    assert "s3://models/tiny-llm/v10/" in msg and "--pattern" in msg and "v1/, v2/" in msg


def test_a_version_is_not_a_root() -> None:
    """An object of its own, or sub-folders that do not look like versions, make a version."""
    assert version_folders("m/v2/", ["m/v2/config.json", "m/v2/shard/1.bin"]) == []
    assert version_folders("m/v2/", ["m/v2/weights/a.bin", "m/v2/tokenizer/t.json"]) == []
    assert version_folders("m/v2/", []) == []
