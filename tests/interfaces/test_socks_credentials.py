"""`--socks-auth USER:PASSFILE`: the password file's path is taken as a user types it.

No shell expands `~` in the middle of a word (`alice:~/.roam/socks.pass`), nor
in a --config file, so load_credentials has to.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from roam.errors import ConfigError
from roam.interfaces.socksproxy import load_credentials


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".roam").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


def test_tilde_is_the_home_directory(home: Path) -> None:
    (home / ".roam" / "socks.pass").write_text("s3cret\n")
    assert load_credentials("alice:~/.roam/socks.pass") == ("alice", "s3cret")


def test_missing_file_is_named_as_expanded(home: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_credentials("alice:~/.roam/absent.pass")
    assert f"password file {home / '.roam' / 'absent.pass'} does not exist" in str(caught.value)


def test_tilde_only_leads(home: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    # As in a shell: a ~ inside a path is a character of a name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a~b").mkdir()
    (tmp_path / "a~b" / "pw").write_text("inner\n")
    assert load_credentials("alice:a~b/pw") == ("alice", "inner")


def test_plain_paths_are_unchanged(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("plain\r\n")
    assert load_credentials(f"bob:{tmp_path / 'pw'}") == ("bob", "plain")
