# The image the k8s/ manifests run (riffle:0.1.0): Ray's own image of the release the
# manifests name (rayVersion), with riffle and its dependencies. Not built in CI (no
# Docker engine there); tests/unit/test_k8s_manifests.py checks that the dependencies
# below are pyproject.toml's and that the Ray release matches the manifests'.
#   docker build -t riffle:0.1.0 .
FROM rayproject/ray:2.60.0-py311-cpu

WORKDIR /home/ray/riffle

# The dependencies first (a layer that changes only with pyproject.toml): the same
# requirements as [project] dependencies, in the same order.
RUN pip install --no-cache-dir \
        "ray[serve,data]>=2.40" \
        "kafka-python>=3.0.10" \
        "crc32c>=2.4" \
        "scikit-learn>=1.5" \
        "river>=0.22" \
        "pydantic>=2.9" \
        "opentelemetry-sdk>=1.27" \
        "opentelemetry-exporter-prometheus>=0.66b0" \
        "opentelemetry-exporter-otlp-proto-http>=1.27" \
        "psutil>=5.9" \
        "click>=8.1" \
        "rich>=13.7" \
        "orjson>=3.10" \
        "msgspec>=0.18" \
        "pyyaml>=6.0" \
        "ddsketch>=3.0" \
        "sqlalchemy>=2.0" \
        "alembic>=1.13" \
        "psycopg[binary]>=3.1" \
        "duckdb>=1.1" \
        "plotly>=5.20"

# Then riffle itself, without resolving anything again.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users actors ./actors
COPY --chown=ray:users pipelines ./pipelines
COPY --chown=ray:users configs ./configs
RUN pip install --no-cache-dir --no-deps .

# Ray starts its workers at nice 15 on a local Ray; in a pod the workers are the
# pipeline (see actors/driver.py).
ENV RAY_worker_niceness=0
# Sink batches (up to ~2,000 predictions) travel inline, not through the object store
# (actors/driver.py's INLINE_BYTES, for a Ray that riffle starts itself).
ENV RAY_max_direct_call_object_size=1048576
