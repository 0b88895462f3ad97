"""The browser page (web/) and the model catalog it and ``GET /v1/models`` are built from."""
