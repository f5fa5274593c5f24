"""Scoring as a service: the same registry versions as the stream, over HTTP.

Ray-free: the request and response bodies (:mod:`~pipelines.serving.api`), API keys and
roles (:mod:`~pipelines.serving.auth`), the models that follow the stream's deployment
(:mod:`~pipelines.serving.holder`), lifecycle commands as the CLI sends them
(:mod:`~pipelines.serving.commands`), the feedback stream
(:mod:`~pipelines.serving.feedback`), the routes' core (:mod:`~pipelines.serving.service`)
and the FastAPI application (:mod:`~pipelines.serving.routes`). Ray Serve runs it in
``actors.serving`` (replicas, autoscaling, ``build_app`` for ``serve run``).
"""
