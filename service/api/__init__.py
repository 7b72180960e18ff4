"""Transport: gRPC servicer, OpenAI HTTP gateway, auth, domain errors -> status codes."""
