"""The jobs runner: pulls job items from JetStream, runs them through inference, records each result."""
