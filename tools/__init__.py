"""Developer tools: code generation and the local stack live beside the services, not inside them."""
