"""The local stack: real Postgres, NATS JetStream, Envoy and Ferry's services as supervised processes."""
