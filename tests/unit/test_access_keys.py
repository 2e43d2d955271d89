"""The --access-keys file: its format, its errors (never the secret) and its reloads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from cachenode.access import Scope
from cachenode.auth.keys import KeyFile, KeyFileError, parse_keys
from cachenode.config import ConfigError, NodeConfig

S1, S2 = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY1", "secret-of-the-second-key"


def test_parse_lines_scopes_and_comments() -> None:
    keys = parse_keys(f"""
# loaders of team a
  AKIDA {S1} models/team-a/ shared
AKIDB\t{S2}
   # an indented comment
""")
    a, b = keys["AKIDA"], keys["AKIDB"]
    assert a.principal.scopes == (Scope("models", "team-a/"), Scope("shared", ""))
    assert not a.principal.unrestricted and b.principal.unrestricted
    assert a.secret == S1 and S1 not in repr(a)


@pytest.mark.parametrize(("text", "line", "why"), [
    (f"AKIDA {S1}\nAKIDB", 2, "expected ACCESS_KEY_ID SECRET"),
    (f"# c\nAK/1 {S1}", 2, "must be 3-128 letters"),
    ("AKIDA tiny-secret", 1, "shorter than 16"),
    (f"AKIDA {S1} Bad_Bucket!/x", 1, "invalid bucket name"),
    (f"AKIDA {S1}\n\nAKIDA {S2}", 3, "already on line 1"),
])
def test_errors_name_the_line_and_never_the_secret(text: str, line: int, why: str) -> None:
    with pytest.raises(KeyFileError) as e:
        parse_keys(text)
    assert e.value.line == line and why in str(e.value)
    assert S1 not in str(e.value) and S2 not in str(e.value) and "tiny-secret" not in str(e.value)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_reload_on_change_keeps_old_keys_when_invalid(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys"
    write(path, f"AKIDA {S1}\n")
    seen: list[tuple[str, int]] = []
    kf = KeyFile(path, lambda result, n: seen.append((result, n)))
    kf.load()
    assert kf.get("AKIDA") and not kf.poll()  # unchanged: nothing read
    write(path, f"AKIDA {S1}\nAKIDB {S2}\n")
    assert kf.poll() and kf.get("AKIDB")
    with caplog.at_level(logging.WARNING, "cachenode.auth.keys"):
        write(path, f"AKIDA {S1}\nAKIDB tooshort\n")
        assert not kf.poll()
    assert kf.get("AKIDB") and kf.get("AKIDB").secret == S2  # type: ignore[union-attr]
    assert "line 2" in caplog.text and "tooshort" not in caplog.text and S1 not in caplog.text
    path.unlink()
    assert not kf.poll() and len(kf) == 2  # gone: the keys stay
    write(path, f"AKIDB {S2}\n")  # revoke AKIDA
    assert kf.poll() and kf.get("AKIDA") is None
    assert seen == [("ok", 1), ("ok", 2), ("invalid", 2), ("invalid", 2), ("ok", 1)]


def test_a_kubernetes_secret_update_swaps_a_symlink(tmp_path: Path) -> None:
    # kubelet's layout: keys -> ..data/keys, ..data -> ..<timestamp>/, swapped atomically.
    old, new = tmp_path / "..2024_01", tmp_path / "..2024_02"
    old.mkdir()
    new.mkdir()
    (old / "keys").write_text(f"AKIDA {S1}\n")
    (new / "keys").write_text(f"AKIDB {S2}\n")
    os.utime(new / "keys", ns=(1, 1))  # an older mtime: the inode and path tell
    (tmp_path / "..data").symlink_to(old.name)
    (tmp_path / "keys").symlink_to("..data/keys")
    kf = KeyFile(tmp_path / "keys")
    kf.load()
    (tmp_path / "..data_tmp").symlink_to(new.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert kf.poll() and kf.get("AKIDB") and kf.get("AKIDA") is None


def test_invalid_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"AKIDA {S1} x/prefix\n")
    with pytest.raises(ConfigError, match="line 1"):
        KeyFile(path).load()
    with pytest.raises(ConfigError, match="cannot read"):
        KeyFile(tmp_path / "missing").load()


def test_keys_in_a_group_need_a_cluster_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--cluster-secret-file is required"):
        NodeConfig(access_keys_file=tmp_path / "k", etcd_endpoints=("http://e:2379",))
    NodeConfig(access_keys_file=tmp_path / "k")  # alone: no peers to tell apart
    NodeConfig(access_keys_file=tmp_path / "k", etcd_endpoints=("http://e:2379",),
               cluster_secret_file=tmp_path / "s")
    cfg = NodeConfig.from_args([], {"CACHENODE_ACCESS_KEYS": str(tmp_path / "k"),
                                    "CACHENODE_CLUSTER_SECRET_FILE": ""})
    assert cfg.access_keys_file == tmp_path / "k" and cfg.cluster_secret_file is None
