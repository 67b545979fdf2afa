# Two commands on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install install-dev system-deps test-deps lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed system-deps
install-dev: $(VENV)/.installed-dev system-deps test-deps

# What the server needs to run, from Debian: the PostgreSQL server binaries (embedded cluster);
# gpg and openssl, which encrypt custodians' share envelopes and subject-access bundles to OpenPGP
# keys and X.509 certificates.
system-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql; }
	@{ command -v gpg && command -v openssl; } >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq gnupg openssl; }

# What only the tests need, from Debian: SIPp (interop/load tests), the age command line
# (custodians opening their shares), SoftHSM2 (a real PKCS#11 token), OpenSSH's sshd, which the
# delivery tests start on a loopback port as the customer's SFTP server, and Chromium, which the
# web interface's browser tests drive through Playwright (Playwright's own browser download is
# not used).
test-deps:
	@command -v sipp >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq sip-tester; }
	@command -v age >/dev/null 2>&1 && command -v softhsm2-util >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq age softhsm2; }
	@test -x /usr/sbin/sshd || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openssh-server; }
	@test -x /usr/bin/chromium || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

run: install
	$(BIN)/siprec-server run

test: install-dev
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy siprec_server storage api

bench: install
	$(BIN)/python bench/media_load.py

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
