"""CPU feature detection for picking the Noise cipher.

Kept apart from `roam.crypto.noise` because it reads /proc/cpuinfo, and the
Noise code does no I/O.
"""

from __future__ import annotations

import functools
import platform

__all__ = ["default_cipher", "has_aes_instructions", "parse_cpuinfo_aes"]

CPUINFO = "/proc/cpuinfo"


def parse_cpuinfo_aes(text: str) -> bool:
    """Whether /proc/cpuinfo text lists the `aes` flag.

    x86 lists it under "flags", ARM under "Features".
    """
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features") and "aes" in value.split():
            return True
    return False


@functools.cache
def has_aes_instructions() -> bool:
    """Whether this CPU has AES instructions; cached, as it cannot change."""
    if platform.system() == "Darwin":
        # Every Apple Silicon CPU has the ARMv8 crypto extensions.
        return platform.machine() == "arm64"
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo_aes(f.read())
    except OSError:
        # Unknown CPU: ChaChaPoly is fast and constant-time in software.
        return False


def default_cipher() -> str:
    """The Noise cipher to prefer here: AESGCM with AES instructions, else ChaChaPoly."""
    return "AESGCM" if has_aes_instructions() else "ChaChaPoly"
