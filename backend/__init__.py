"""The generation service: facade, queues, scheduling policy, workers and the engine."""
