"""Documentation shipped in the package: the exporter serves runbook.md at /runbook."""
