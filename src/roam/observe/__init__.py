"""Observing a running daemon: `--metrics HOST:PORT`.

One small HTTP server per daemon (`http`) serves Prometheus metrics that a
collector reads from the daemon's live state at each scrape (`metrics`), the
status `roam status --json` shows, and a page that draws it (`page.html`).
"""
