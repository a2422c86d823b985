"""Ray's settings for every test here, set before any test imports Ray: Ray reads its
authentication mode once, at import, and a driver must agree with the nodes it joins."""

from __future__ import annotations

import os

for _key, _value in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_key, _value)
