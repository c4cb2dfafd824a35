"""The data plane: WS/WSS listeners proxying to backends over HTTP/1.1.

It never talks to the Kubernetes API: it runs from a pushed snapshot or a YAML file.
"""
