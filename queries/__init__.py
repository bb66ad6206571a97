"""The collector catalog: data files, one per collector (read with importlib.resources)."""
