"""Export: the paged model of an archive, a preset or a config, traced to MLIR (exporter.py),
with shortfin's config.json (service_config.py); program.py is the only module importing
iree.turbine."""

from irforge.stages.export.exporter import export

__all__ = ["export"]
