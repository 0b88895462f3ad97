"""The Eden-style async API: ``POST /v2/tasks/create`` and ``GET /v2/tasks/{id}``."""
