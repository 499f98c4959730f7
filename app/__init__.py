"""The smedit HTTP service: API, worker, persistence, queue, auth, metrics."""
