"""Results on disk: ``store`` (one JSON record per run: schema, validation, loading, collecting),
``files`` (atomic, umask-honouring writes; damaged checkpoints named) and ``provenance`` (hashes,
git commit)."""
