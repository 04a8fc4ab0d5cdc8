"""The application inside a lab namespace: an echo conversation through a forward.

    python tests/system/lab_app.py PORT BYTES SEED

Prints `progress RECEIVED` every 100 ms, then one JSON line with the result.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.system.harness import EchoResult, echo_conversation


def main() -> None:
    port, total, seed = (int(a) for a in sys.argv[1:4])
    result = EchoResult()
    t = threading.Thread(target=echo_conversation, args=(port, total, seed, result), daemon=True)
    t.start()
    while t.is_alive():
        print(f"progress {result.received}", flush=True)
        time.sleep(0.1)
    print(json.dumps(dataclasses.asdict(result)), flush=True)


if __name__ == "__main__":
    main()
