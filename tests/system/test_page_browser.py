"""The status page in a real headless Chromium: it draws a handover.

The daemons run as in test_metrics (real processes on loopback); after a hard
handover the client's page is loaded in Chromium, which runs its script
against /status.json; the rendered DOM must hold the handover's row and the
screenshot must be a picture, not a blank page.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

from tests.conftest import require

from .harness import Procs
from .test_metrics import Units, handovers, roam, scrape, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium(url: str, *mode: str, timeout: float = 60.0) -> str:
    """Run headless Chromium on `url` once; its stdout. Ended by its own pid."""
    profile = tempfile.mkdtemp(prefix="roam-chromium-")
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--window-size=1200,900",
            # The page polls /status.json once a second: 3 s of the page's own
            # time lets it fetch and draw a few times before the DOM is taken.
            "--virtual-time-budget=3000", *mode, url]
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        out, _ = popen.communicate(timeout=timeout)
        return out.decode(errors="replace")
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)  # its own group: it and its helpers
            popen.wait(5)
        shutil.rmtree(profile, ignore_errors=True)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8, depth
            assert colour in (2, 6), colour
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride, rows = zlib.decompress(idat), width * channels, []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def test_the_page_shows_a_handover_in_chromium(tmp_path: Path) -> None:
    require(os.access(CHROMIUM, os.X_OK), "needs chromium (Debian's package)")
    with Procs(tmp_path) as procs:
        units = Units(procs, tmp_path)
        url = units.urls["client"]
        result, talk = units.talk(8 << 20)
        roam("link", "wifi", "down", "--control", str(units.control))
        wait_for("the hard handover", lambda: handovers(scrape(url), "hard") >= 1)
        dom = chromium(url, "--dump-dom")
        assert 'class="handover"' in dom, dom[-3000:]
        assert 'data-kind="hard"' in dom, dom[-3000:]
        assert "wifi" in dom
        assert "cell" in dom
        shot = tmp_path / "page.png"
        chromium(url, f"--screenshot={shot}")
        # Every other daemon's page draws its own status without an error
        # (a script error shows as "no answer: ..." in place of "live").
        for role in ("server", "relay", "registrar"):
            header = ""
            for _ in range(3):  # a page load on a busy machine may miss its budget
                other = chromium(units.urls[role], "--dump-dom")
                header = other[other.find("<header"):][:600]
                if "live ·" in header:
                    break
            assert f'<h1 id="role">roam {role}</h1>' in header, header
            assert "live ·" in header, header
            assert "no answer" not in header, header
        server = chromium(units.urls["server"], "--dump-dom")
        assert "session" in server.split('id="sessions"', 1)[1], server[-3000:]
        talk.join(120)
        assert result.error is None, result.error
    data = shot.read_bytes()
    assert 5_000 < len(data) < 5_000_000
    width, height, rows = png_pixels(data)
    assert (width, height) == (1200, 900)
    colours: set[bytes] = set()
    not_white = 0
    channels = len(rows[0]) // width
    for row in rows[::4]:
        for x in range(0, len(row), channels * 4):
            pixel = row[x:x + 3]
            colours.add(pixel)
            not_white += pixel != b"\xff\xff\xff"
    assert len(colours) > 20, "the screenshot is nearly one colour"
    assert not_white > 1000
    # The hard handover's red pill or timeline mark (#d2452f) is drawn.
    assert any(abs(p[0] - 0xd2) < 24 and abs(p[1] - 0x45) < 24 and abs(p[2] - 0x2f) < 24
               for p in colours)
