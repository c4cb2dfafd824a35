"""The kopf operator: watched objects in, snapshots and status out (issue 7).

    handlers.py       kopf index and event handlers: parse, store, mark dirty
    models.py         typed, never-raising parsing of the five watched kinds
    store.py          indexes by namespace/name, listing flags, affected LoadBalancers
    builder.py        pure: store + LoadBalancer -> Snapshot and Listener conditions
    status.py         pure: condition vocabulary, merging, Programmed from sessions
    owned.py          owned Secret, Deployment, Services; server-side apply
    reconciler.py     debounced rebuild loop, the listing gate, status patches
    config_server.py  data planes dial in; snapshots out, acks and nacks in
    metrics.py        every controller metric
    settings.py       environment settings
    main.py           the wslb-controller process

`controller` never imports `dataplane`; both depend only on `lbwire`.
"""
