"""The engine's parts that the controller (``firepbt.controller``) composes.

``population`` (members, evaluators, their curves, views and fitness tables), ``segments``
(the work queue and the synchronous barrier), ``effects`` (carrying out the algorithm's
decisions), ``lease`` (the experiment lock, heartbeat and fencing), ``retention`` (which
checkpoints stay, and every touch of the checkpoint files) and ``settings`` (the run's
validated settings). See docs/design.md.
"""
