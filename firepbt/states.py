"""Worker roles and the statuses of workers and segments: the strings the store records.

One module, so that the store, the algorithms and the controller cannot drift apart.
"""

from __future__ import annotations

# Worker roles.
MEMBER = "member"
EVALUATOR = "evaluator"

# Worker statuses.
ACTIVE = "active"  # training
IDLE = "idle"  # an evaluator without an assignment
FAILED = "failed"  # exceeded max_failures; replaced from a donor
DONE = "done"  # reached the step budget

# Segment statuses.
PENDING = "pending"
COMPLETED = "completed"
SEG_FAILED = "failed"
CANCELLED = "cancelled"
