"""Shared plumbing below every feature: Redis (server, clients, coordination, ledger, counters), queues,
file utilities and the one Celery client."""
