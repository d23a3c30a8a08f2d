# Redis for Compose where redis:7-alpine cannot be pulled: Debian's redis-server (7.0) on the
# locally built base (deploy/local/images.py builds both). It behaves as the official image
# does for compose.yaml: runs as `redis`, keeps its files in /data, and accepts connections
# from other containers without a password (protected mode off, as the official image is
# built). Use it with MODELGATE_REDIS_IMAGE=modelgate-redis:bookworm.
ARG BASE_IMAGE=modelgate-base:bookworm
FROM ${BASE_IMAGE}
# Debian's versions come with the base's suite; pins would break on every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /data \
    && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
CMD ["redis-server"]
