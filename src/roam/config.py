"""`--config FILE.toml`: the same settings as the command-line flags.

Keys are the long flag names without dashes in front (`authorized-keys`,
`allow`); repeatable flags take a list. A flag given on the command line
wins over the file.

Values are kept as written: click passes them through the same parameter
types as the flags, so a path such as `key = "~/.roam/client.key"` has its
`~` expanded where every path option's is (roam.cli), and `socks-auth`'s
file where the flag's is (load_credentials).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

from roam.errors import ConfigError


def load_config(path: str, known: dict[str, tuple[str, bool]]) -> dict[str, Any]:
    """Read a TOML file into click's default_map for a command.

    `known` maps each long flag name (without the dashes in front) to the
    parameter it sets and whether it is repeatable.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except ValueError:
        # tomllib lets int()'s digit limit through as a bare ValueError.
        raise ConfigError(f"config file {path} is not valid TOML: an integer has more than "
                          f"{sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        # tomllib reads nested arrays and inline tables by recursion, with no
        # depth limit of its own.
        raise ConfigError(f"config file {path} is not valid TOML: arrays or tables "
                          "nested too deeply") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("_", "-")
        if name not in known or name == "config":
            choices = ", ".join(sorted(k for k in known if k != "config"))
            raise ConfigError(f"config file {path}: unknown setting {key!r} (known: {choices})")
        dest, repeatable = known[name]
        if repeatable:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"config file {path}: {key!r} must be a string or a list "
                                  "of strings")
        elif isinstance(value, list | dict):
            raise ConfigError(f"config file {path}: {key!r} takes one value, not a "
                              f"{type(value).__name__}")
        out[dest] = value
    return out
