"""Orchestration above storage that the command line, the HTTP API and the server share: each
service validates with the shared rules (siprec_server.access, ...), works through the storage
repositories and audits, so that e.g. `siprec-server users add` and `POST /api/v1/users` are one
code path. Services know nothing of HTTP or argparse."""
