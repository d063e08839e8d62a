"""Serving an artifact: model repositories for inference servers, derived from the manifest's I/O contract."""
