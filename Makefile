# overcast — see README.md.  Everything runs from the virtualenv in .venv,
# which scripts/setup.sh creates (idempotently, fast on a second run).

PORT ?= 8080
DATA ?= ./var
VENV := .venv
# bench/ may not exist yet in a fresh clone (git keeps no empty folders).
PY_PATHS := $(wildcard src tests bench)
BENCHES := $(sort $(wildcard bench/*.py))

.PHONY: all run test bench lint fmt setup-run setup-test

all: test

setup-run:
	bash scripts/setup.sh run

setup-test:
	bash scripts/setup.sh test

# The test guest (built by setup) as a library drive, and an address pool in
# TEST-NET-1 (never routed), so that a fresh cloud can be used at once.
GUEST_UUID := 6f766572-6361-4573-a774-67756573740a
POOL ?= 192.0.2.0/24
POOL_GATEWAY ?= 192.0.2.1

run: setup-run
	$(VENV)/bin/overcast admin --data $(DATA) drive import-standard build/guest/guest.img.gz \
		--name "overcast test guest" --uuid $(GUEST_UUID) --exist-ok > /dev/null
	$(VENV)/bin/overcast admin --data $(DATA) ip add-pool $(POOL) --gateway $(POOL_GATEWAY) \
		--nameserver $(POOL_GATEWAY) --exist-ok > /dev/null
	$(VENV)/bin/overcast serve --data $(DATA) --listen 127.0.0.1:$(PORT)

lint: setup-test
	$(VENV)/bin/ruff check $(PY_PATHS)
	$(VENV)/bin/ruff format --check $(PY_PATHS)
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: setup-test
	@set -e; for f in $(BENCHES); do \
		echo "== $$f"; \
		$(VENV)/bin/python "$$f"; \
	done

fmt: setup-test
	$(VENV)/bin/ruff check --fix $(PY_PATHS)
	$(VENV)/bin/ruff format $(PY_PATHS)
