#!/usr/bin/env bash
# One-time set-up on a fresh machine (Debian, Python >= 3.11): the offline Fashion-MNIST
# package, PostgreSQL 15, iproute2, a virtual environment in .venv, firepbt with its
# torch/rl/lightning/huggingface/tensorboard/postgres/fsspec/ray/raytune/dev extras.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    echo "installing the Debian package dataset-fashion-mnist (real data, offline)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi

# PostgreSQL 15 for the PostgreSQL store's tests (they start a throwaway server on loopback).
if [ ! -x /usr/lib/postgresql/15/bin/pg_ctl ]; then
    echo "installing the Debian package postgresql-15 (server binaries for the store tests)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15
fi

# iproute2 (`ip netns`) for the multi-host Ray tests: nodes in network namespaces joined by
# veth pairs, each with its own address (they skip, saying why, where namespaces are refused).
if ! command -v ip >/dev/null 2>&1; then
    echo "installing the Debian package iproute2 (network namespaces for the Ray cluster tests)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch is pinned (==2.13.0, a CPU wheel); a range would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[torch,rl,lightning,huggingface,tensorboard,postgres,fsspec,ray,raytune,dev]"
# The dashboard and its browser tests: Debian's chromium, driven headless by Playwright for
# Python (Playwright's own browser download is never used: it fails offline).
if [ ! -x /usr/bin/chromium ]; then
    echo "installing the Debian package chromium (headless browser tests)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dashboard,browser]"
touch .venv/.firepbt-setup
