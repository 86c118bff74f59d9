"""The gateway: Ferry's only public service (API keys, tenancy, validation, deadlines, routing)."""
