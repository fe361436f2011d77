"""The coordinator daemon: gRPC server, round state machine, aggregation, persistence, metrics, audit."""
