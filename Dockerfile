# redis-migrate as a container image: for a bastion-less migration from a one-off ECS task inside the VPC.
#
# Build with scripts/build-image.sh, which first fills dist/wheelhouse on the host (`pip wheel`): the build
# steps install from that wheelhouse only, never from the package index (a build here reaches none).
# The host's Python minor version must be the base's (3.11 for both bases below): the wheels are the host's.
#
#   BASE  the base image: any Debian-like image with python3 (with venv) and ca-certificates.
#         Default: python:3.11-slim-bookworm; without a registry the script makes a Debian bookworm base
#         with mmdebstrap (Debian's Python 3.11.2, which is why the wheelhouse carries async-timeout).
ARG BASE=docker.io/library/python:3.11-slim-bookworm

# --- the venv, built apart so that the wheels and pip never reach the final image --------------------
FROM ${BASE} AS venv
COPY dist/wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv /opt/redis-migrate \
 && /opt/redis-migrate/bin/python -m pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/wheelhouse redis-migrate \
 && /opt/redis-migrate/bin/python -m pip uninstall -y -q pip setuptools \
 && rm -f /opt/redis-migrate/bin/pip* /opt/redis-migrate/bin/activate* /opt/redis-migrate/bin/Activate.ps1 \
 && /opt/redis-migrate/bin/redis-migrate --version

# --- the image ------------------------------------------------------------------------------------------
FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="redis-migrate" \
      org.opencontainers.image.description="Resumable, verified migration of a Redis into ElastiCache Serverless" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=venv /opt/redis-migrate /opt/redis-migrate
# A non-root user (fixed ids, for EFS access points and runAsNonRoot checks) owns the run dir, and nothing else.
# The CA bundle comes with the base's ca-certificates: TLS to ElastiCache and to AWS's APIs needs it.
RUN test -s /etc/ssl/certs/ca-certificates.crt || { echo "the base image has no CA bundle (ca-certificates)" >&2; exit 1; } \
 && groupadd --system --gid 10001 redis-migrate \
 && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin redis-migrate \
 && mkdir -p /data && chown 10001:10001 /data && chmod 0700 /data \
 && rm -rf /var/cache/* /var/log/* /root/.cache /tmp/*
# Progress bars go to the task's log (awslogs): one line per 30 s rather than ten a second.
ENV PATH=/opt/redis-migrate/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    TQDM_MININTERVAL=30
USER 10001:10001
WORKDIR /data
# The run dir: mount a volume here (EFS on Fargate) so that a replaced task resumes, e.g. --run-dir /data/prod.
VOLUME ["/data"]
ENTRYPOINT ["redis-migrate"]
CMD ["--help"]
