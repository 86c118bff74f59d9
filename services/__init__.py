"""Ferry's services: gateway (public), inference, jobs and store, plus code they share in common."""
