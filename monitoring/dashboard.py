"""The wslb Grafana dashboard, built as code with grafana-foundation-sdk.

`python -m monitoring.dashboard` writes helm/wslb/files/dashboards/wslb.json, which the chart
ships in a ConfigMap for Grafana's dashboard sidecar; `--check` fails when that file is not
what this code builds (tests/monitoring/test_dashboard.py runs it). Queries use only the
metric names of dataplane/metrics.py, dataplane/process_metrics.py and controller/metrics.py,
and the labels the chart's PodMonitor gives (namespace, load_balancer, pod).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

OUTPUT = Path(__file__).resolve().parent.parent / "helm/wslb/files/dashboards/wslb.json"
UID = "wslb-overview"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

LB = 'namespace=~"$namespace", load_balancer=~"$load_balancer"'
SEL = f'{LB}, listener=~"$listener"'
DP = 'job="wslb-dataplane", namespace=~"$namespace", load_balancer=~"$load_balancer"'
RULE = f'{SEL}, rule=~"$rule"'
RATE = "$__rate_interval"
HTTP_REQUESTS = "wslb_dataplane_http_requests_total"
HTTP_SECONDS = "wslb_dataplane_http_request_duration_seconds_bucket"


def query(expr: str, legend: str = "", ref: str = "A") -> Dataquery:
    return (
        Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DATASOURCE)
    )


def series(title: str, unit: str, *queries: tuple[str, str], description: str = "") -> Timeseries:
    panel = (
        Timeseries()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(12)
        .height(8)
        .fill_opacity(10)
    )
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + index)))
    return panel


def stat(title: str, unit: str, expr: str, legend: str = "") -> Stat:
    return (
        Stat()
        .title(title)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(4)
        .height(4)
        .with_target(query(expr, legend))
    )


def variable(name: str, label: str, expr: str) -> QueryVariable:
    return (
        QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(expr)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def http_latency(quantile: str) -> tuple[str, str]:
    return (
        f"histogram_quantile({quantile}, sum by (le, listener)"
        f" (rate({HTTP_SECONDS}{{{RULE}}}[{RATE}])))",
        f"p{quantile[2:]} {{{{listener}}}}",
    )


def http_row(dashboard: Dashboard) -> Dashboard:
    """Plain HTTP requests (not upgrades, which keep their own panels above)."""
    by_listener = f"sum by (listener) (rate({HTTP_REQUESTS}{{{RULE}}}[{RATE}]))"
    return (
        dashboard.with_row(Row("HTTP"))
        .with_panel(
            series(
                "HTTP requests /s by listener and rule",
                "reqps",
                (
                    f"sum by (listener, rule) (rate({HTTP_REQUESTS}{{{RULE}}}[{RATE}]))",
                    "{{listener}} {{rule}}",
                ),
                description="Plain HTTP requests answered; rule is empty for requests refused"
                " before routing (malformed heads).",
            )
        )
        .with_panel(
            series(
                "HTTP requests /s by status class and method",
                "reqps",
                (
                    f"sum by (code) (rate({HTTP_REQUESTS}{{{RULE}}}[{RATE}]))",
                    "{{code}}",
                ),
                (
                    f"sum by (method) (rate({HTTP_REQUESTS}{{{RULE}}}[{RATE}]))",
                    "{{method}}",
                ),
            )
        )
        .with_panel(
            series(
                "HTTP 5xx ratio",
                "percentunit",
                (
                    # `or 0 * ...`: a listener with traffic and no 5xx shows 0, not no data.
                    f'(sum by (listener) (rate({HTTP_REQUESTS}{{{RULE}, code="5xx"}}[{RATE}]))'
                    f" or 0 * {by_listener}) / {by_listener}",
                    "{{listener}}",
                ),
                description="5xx answers (the backend's and the load balancer's own 502, 503,"
                " 504) over all requests.",
            )
        )
        .with_panel(
            series(
                "HTTP request latency",
                "s",
                http_latency("0.50"),
                http_latency("0.95"),
                http_latency("0.99"),
                description="From the request head to the end of the answer, bodies included:"
                " long-polling requests are long by design.",
            )
        )
        .with_panel(
            series(
                "HTTP backend errors /s by kind",
                "ops",
                (
                    "sum by (listener, rule, kind)"
                    f" (rate(wslb_dataplane_http_backend_errors_total{{{RULE}}}[{RATE}]))",
                    "{{listener}} {{rule}} {{kind}}",
                ),
                description="connect: the dial failed; reset: closed before answering;"
                " timeout: no response head in time (504); invalid: a malformed response.",
            )
        )
        .with_panel(
            series(
                "Idle pooled backend connections",
                "short",
                (
                    f"sum by (listener) (wslb_dataplane_http_pool_idle_connections{{{SEL}}})",
                    "{{listener}}",
                ),
            )
        )
    )


def build() -> Dashboard:
    dashboard = (
        Dashboard("wslb")
        .uid(UID)
        .description(
            "wslb load balancer (WebSocket and HTTP): data planes, listeners, backends, config."
        )
        .tags(["wslb", "websocket", "load-balancer"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            variable(
                "namespace",
                "Namespace",
                "label_values(wslb_dataplane_connections_active, namespace)",
            )
        )
        .with_variable(
            variable(
                "load_balancer",
                "LoadBalancer",
                'label_values(wslb_dataplane_connections_active{namespace=~"$namespace"},'
                " load_balancer)",
            )
        )
        .with_variable(
            variable(
                "listener",
                "Listener",
                f"label_values(wslb_dataplane_connections_active{{{LB}}}, listener)",
            )
        )
        .with_variable(
            variable(
                "rule",
                "Rule (HTTP)",
                f"label_values({HTTP_REQUESTS}{{{SEL}}}, rule)",
            )
        )
        .with_row(Row("Overview"))
        .with_panel(
            stat("Active connections", "short", f"sum(wslb_dataplane_connections_active{{{SEL}}})")
        )
        .with_panel(
            stat(
                "Upgrades /s (101)",
                "reqps",
                f'sum(rate(wslb_dataplane_upgrades_total{{{SEL}, code="101"}}[{RATE}]))',
            )
        )
        .with_panel(
            stat(
                "HTTP requests /s",
                "reqps",
                f"sum(rate({HTTP_REQUESTS}{{{SEL}}}[{RATE}]))",
            )
        )
        .with_panel(
            stat(
                "HTTP 5xx ratio (selected listeners)",
                "percentunit",
                f'(sum(rate({HTTP_REQUESTS}{{{SEL}, code="5xx"}}[{RATE}]))'
                f" or 0 * sum(rate({HTTP_REQUESTS}{{{SEL}}}[{RATE}])))"
                f" / sum(rate({HTTP_REQUESTS}{{{SEL}}}[{RATE}]))",
            )
        )
        .with_panel(stat("Data planes ready", "short", f"sum(wslb_dataplane_ready{{{LB}}})"))
        .with_panel(
            stat(
                "Capacity in use",
                "percentunit",
                f"sum(wslb_dataplane_connections_active{{{LB}}})"
                f" / sum(wslb_dataplane_load_balancer_max_connections{{{LB}}})",
            )
        )
        .with_row(Row("Connections"))
        .with_panel(
            series(
                "Active connections",
                "short",
                (f"sum by (listener) (wslb_dataplane_connections_active{{{SEL}}})", "{{listener}}"),
                (
                    f"sum by (listener) (wslb_dataplane_connections_draining{{{SEL}}})",
                    "{{listener}} draining",
                ),
            )
        )
        .with_panel(
            series(
                "Upgrades /s by result",
                "reqps",
                (
                    f"sum by (code) (rate(wslb_dataplane_upgrades_total{{{SEL}}}[{RATE}]))",
                    "{{code}}",
                ),
                (
                    f"sum by (reason) (rate(wslb_dataplane_rejections_total{{{SEL}}}[{RATE}]))",
                    "refused: {{reason}}",
                ),
            )
        )
        .with_panel(
            series(
                "Closes /s by code and initiator",
                "ops",
                (
                    "sum by (code, initiator)"
                    f" (rate(wslb_dataplane_closes_total{{{SEL}}}[{RATE}]))",
                    "{{code}} by {{initiator}}",
                ),
            )
        )
        .with_panel(
            series(
                "Idle and keepalive timeouts /s",
                "ops",
                (
                    "sum by (listener)"
                    f" (rate(wslb_dataplane_idle_timeouts_total{{{SEL}}}[{RATE}]))",
                    "idle {{listener}}",
                ),
                (
                    f"sum by (listener)"
                    f" (rate(wslb_dataplane_keepalive_timeouts_total{{{SEL}}}[{RATE}]))",
                    "keepalive {{listener}}",
                ),
            )
        )
        .with_panel(
            series(
                "Handshake latency",
                "s",
                (
                    "histogram_quantile(0.5, sum by (le, listener)"
                    f" (rate(wslb_dataplane_handshake_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                    "p50 {{listener}}",
                ),
                (
                    "histogram_quantile(0.99, sum by (le, listener)"
                    f" (rate(wslb_dataplane_handshake_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                    "p99 {{listener}}",
                ),
            )
        )
        .with_panel(
            series(
                "Connection duration",
                "s",
                (
                    "histogram_quantile(0.5, sum by (le, listener)"
                    f" (rate(wslb_dataplane_connection_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                    "p50 {{listener}}",
                ),
                (
                    "histogram_quantile(0.99, sum by (le, listener)"
                    f" (rate(wslb_dataplane_connection_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                    "p99 {{listener}}",
                ),
            )
        )
        .with_row(Row("Traffic"))
        .with_panel(
            series(
                "Messages /s",
                "ops",
                (
                    f"sum by (direction) (rate(wslb_dataplane_messages_total{{{SEL}}}[{RATE}]))",
                    "{{direction}}",
                ),
            )
        )
        .with_panel(
            series(
                "Bytes /s",
                "Bps",
                (
                    f"sum by (direction) (rate(wslb_dataplane_bytes_total{{{SEL}}}[{RATE}]))",
                    "{{direction}}",
                ),
            )
        )
    )
    dashboard = http_row(dashboard)
    return (
        dashboard.with_row(Row("Backends"))
        .with_panel(
            series(
                "Healthy backends",
                "short",
                (
                    "sum by (listener) (max by (listener, backend)"
                    f" (wslb_dataplane_backend_healthy{{{SEL}}}))",
                    "healthy {{listener}}",
                ),
                (
                    "count by (listener) (max by (listener, backend)"
                    f" (wslb_dataplane_backend_healthy{{{SEL}}}))",
                    "total {{listener}}",
                ),
            )
        )
        .with_panel(
            series(
                "Tunnels per backend",
                "short",
                (
                    "sum by (listener, backend)"
                    f" (wslb_dataplane_backend_connections_active{{{SEL}}})",
                    "{{listener}} {{backend}}",
                ),
                (
                    "sum by (listener, backend)"
                    f" (rate(wslb_dataplane_backend_connect_failures_total{{{SEL}}}[{RATE}]))",
                    "connect failures /s {{backend}}",
                ),
            )
        )
        .with_row(Row("Limits and TLS"))
        .with_panel(
            series(
                "Limits in use",
                "percentunit",
                (
                    f"sum(wslb_dataplane_connections_active{{{LB}}})"
                    f" / sum(wslb_dataplane_load_balancer_max_connections{{{LB}}})",
                    "load balancer connections",
                ),
                (
                    f"sum by (listener) (wslb_dataplane_connections_active{{{SEL}}})"
                    " / sum by (listener)"
                    f" (wslb_dataplane_listener_max_connections{{{SEL}}})",
                    "{{listener}} connections",
                ),
                (
                    f"sum(rate(wslb_dataplane_upgrades_total{{{LB}}}[{RATE}]))"
                    " / sum(wslb_dataplane_load_balancer_max_new_connections_per_second"
                    f"{{{LB}}})",
                    "load balancer new connections /s",
                ),
            )
        )
        .with_panel(
            series(
                "TLS handshake failures /s",
                "ops",
                (
                    "sum by (listener, reason)"
                    f" (rate(wslb_dataplane_tls_handshake_failures_total{{{SEL}}}[{RATE}]))",
                    "{{listener}} {{reason}}",
                ),
            )
        )
        .with_panel(
            series(
                "Certificate time left",
                "s",
                (
                    "min by (listener, certificate)"
                    f" (wslb_dataplane_certificate_expiry_timestamp_seconds{{{SEL}}}) - time()",
                    "{{listener}} {{certificate}}",
                ),
            )
        )
        .with_row(Row("Config"))
        .with_panel(
            series(
                "Applied config version per pod",
                "short",
                (
                    f"max by (pod, version) (wslb_dataplane_config_info{{{LB}}})",
                    "{{pod}} v{{version}}",
                ),
            )
        )
        .with_panel(
            series(
                "Config reloads, nacks and channel",
                "short",
                (
                    "sum by (result)"
                    f" (increase(wslb_dataplane_config_reloads_total{{{LB}}}[{RATE}]))",
                    "reloads {{result}}",
                ),
                (
                    f"sum by (reason) (increase(wslb_controller_nacks_total{{{LB}}}[{RATE}]))",
                    "controller nacks {{reason}}",
                ),
                (
                    f"sum(wslb_dataplane_config_channel_connected{{{LB}}})",
                    "channels connected",
                ),
                (
                    "time() - max by (pod)"
                    f" (wslb_dataplane_config_last_ack_timestamp_seconds{{{LB}}})",
                    "seconds since last ack {{pod}}",
                ),
            )
        )
        .with_row(Row("Processes"))
        .with_panel(
            series(
                "Resident memory per pod and worker",
                "bytes",
                (f"process_resident_memory_bytes{{{DP}}}", "{{pod}} {{worker}}"),
            )
        )
        .with_panel(
            series(
                "CPU per pod and worker",
                "percentunit",
                (f"rate(process_cpu_seconds_total{{{DP}}}[{RATE}])", "{{pod}} {{worker}}"),
            )
        )
        .with_panel(
            series(
                "Open file descriptors",
                "short",
                (f"process_open_fds{{{DP}}}", "{{pod}} {{worker}}"),
                (f"max(process_max_fds{{{DP}}})", "limit"),
            )
        )
    )


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m monitoring.dashboard", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
