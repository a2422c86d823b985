# The two commands of the README. Both do the whole set-up first (scripts/setup.sh).
.PHONY: setup demo test lint bench

setup: .venv/.firepbt-setup

.venv/.firepbt-setup: pyproject.toml scripts/setup.sh
	./scripts/setup.sh

demo: setup
	.venv/bin/firepbt demo --out runs/demo

test: setup
	.venv/bin/ruff check firepbt tests
	.venv/bin/mypy
	.venv/bin/pytest -q

bench: setup
	.venv/bin/firepbt bench overhead --json
	.venv/bin/firepbt bench controller --json
