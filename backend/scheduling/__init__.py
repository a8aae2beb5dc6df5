"""Scheduling policy, pure and torch-free: lanes by cost, weighted fair queuing with
aging, the choice of preemption victims, and start-time estimates."""
