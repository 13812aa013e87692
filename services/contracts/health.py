"""Health statuses a service reports besides its own (grpc.health.v1, one status per name).

`POST_PROCESS_QUEUE`, reported by the orchestrator: SERVING while no post-process job is dead, NOT_SERVING
while some are (they wait for an operator: `rapport outbox` lists them, `rapport outbox --retry-dead` queues
them again). It says nothing about readiness — the orchestrator's own status stays SERVING, so probes and
load balancing are unaffected; the gateway's `/readyz` shows it as `post_process`.
"""

from __future__ import annotations

POST_PROCESS_QUEUE = "rapport.orchestrator.v1.PostProcessQueue"
