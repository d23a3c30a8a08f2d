"""The gateway: HTTP (KServe V2 and V1) in front of the Redis request queue."""
