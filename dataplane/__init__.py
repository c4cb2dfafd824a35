"""The data plane: WS/WSS listeners proxying to backends over HTTP/1.1; never talks to the Kubernetes API."""
