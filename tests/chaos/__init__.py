"""The chaos harness: real ``imagine`` processes killed, interrupted, starved of disk,
cut off from Redis and doubled up on one data directory, then checked for the
promise (no job lost, none run twice, no usage charged twice, no process left
hanging)."""
