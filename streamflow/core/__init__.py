"""The base layer: settings, child-process environment, the embedded stack, connections, run logs,
business time, shared names, errors and progress. Imports nothing above it."""
