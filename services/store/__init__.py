"""store: the only owner of Postgres. Ingests record events from JetStream, serves reads over gRPC."""
