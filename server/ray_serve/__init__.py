"""mmserve on Ray Serve: the same FastAPI app as `mmserve serve`, scaled out over a Ray cluster.

    HTTP ─► Ray Serve proxy ─► ingress replica(s): create_app(...)        (routes, validation, decoding,
                                │  RayState / RayBatcher                   preprocessing, tokenising:
                                ▼  (DeploymentHandle calls)                exactly the split frontend's job)
                               model deployment per model, N replicas     (ServerState: backend + the
                                                                           project's dynamic/continuous batcher)

Modules: `deployments` (the two Ray Serve deployment classes), `ingress_state` (the ingress's
ServerState and the batcher stand-in that calls a model deployment), `app` (the application builder
that `serve run` / `serve deploy` and `mmserve serve --ray` use, and the config file it writes),
`cluster` (starting or joining Ray bound to loopback). Ray is an optional dependency (`mmserve[ray]`):
nothing here is imported by the plain server.
"""
