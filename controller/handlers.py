"""kopf handlers: parse, store, mark dirty. Nothing else.

For each of the five watched kinds there is one index function and one event handler,
both `async` so that they run on the event loop (kopf runs sync handlers in threads):

- the index function runs for every listed, added or modified object: parse the body,
  put it in the store, mark the LoadBalancers it affects dirty. Because kopf holds back
  every non-index handler until all indexes are pre-populated from the initial listing,
  the store is complete before any event handler runs;
- the event handler therefore opens the reconciler's gate on its first call
  (`mark_synced`), counts the event, and handles deletions, which kopf never shows to
  index functions.

The index functions return None, so kopf keeps no copy of our objects; the store is
the only one. kopf stores no state of its own: event and index handlers are stateless,
and its progress and diff-base storages point at annotations, never at `status`.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from controller.metrics import ControllerMetrics
from controller.models import GROUP, VERSION, Kind, parse
from controller.reconciler import Reconciler
from controller.store import Store

RESOURCES: dict[Kind, tuple[str, str, str]] = {
    Kind.LOAD_BALANCER: (GROUP, VERSION, "loadbalancers"),
    Kind.LISTENER: (GROUP, VERSION, "listeners"),
    Kind.ENDPOINT_SLICE: ("discovery.k8s.io", "v1", "endpointslices"),
    Kind.SERVICE: ("", "v1", "services"),
    Kind.SECRET: ("", "v1", "secrets"),
}
ANNOTATION_PREFIX = "wslb.io"


def configure(settings: Any) -> None:
    """kopf settings for this operator (a `kopf.OperatorSettings`)."""
    # Leader election is election.py's Lease: kopf runs only on the leader, without peering
    # (no peering CRDs to install, no cluster-wide rights for them).
    settings.peering.standalone = True
    settings.scanning.disabled = True  # no CRD or namespace watching: least RBAC
    settings.posting.level = logging.WARNING  # Kubernetes Events only for real trouble
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.watching.server_timeout = 300  # renew long watches before proxies cut them
    settings.watching.client_timeout = 330


def register(
    registry: Any, store: Store, reconciler: Reconciler, metrics: ControllerMetrics
) -> None:
    """Attach the startup handler and the handlers of the five kinds to `registry`."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: Any, **_: Any) -> None:
        configure(settings)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # A private registry gets no default login: in a pod, the ServiceAccount;
        # elsewhere, the kubeconfig (as kopf's own default registry would do).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    for kind, resource in RESOURCES.items():
        _register_kind(registry, kind, resource, store, reconciler, metrics)


def _register_kind(
    registry: Any,
    kind: Kind,
    resource: tuple[str, str, str],
    store: Store,
    reconciler: Reconciler,
    metrics: ControllerMetrics,
) -> None:
    slug = kind.value.lower()

    @kopf.index(*resource, id=f"wslb-{slug}-index", registry=registry)
    async def index(body: Any, **_: Any) -> None:
        reconciler.mark_dirty(store.put(parse(kind, body)))

    @kopf.on.event(*resource, id=f"wslb-{slug}-event", registry=registry)
    async def event(type: str, namespace: str | None, name: str, **_: Any) -> None:
        metrics.event(kind.value, type)
        reconciler.mark_synced()
        if type == "DELETED":
            reconciler.mark_dirty(store.delete(kind, namespace or "", name))
