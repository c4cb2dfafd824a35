"""Shared, sans-I/O config package: snapshot schema, wire messages, session state, errors.

Imports no websockets, kopf, kubernetes or event loop; both the controller and the data
plane depend on it, and they never depend on each other.
"""
