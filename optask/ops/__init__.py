"""Operations: health, alerts, the metrics exporter, and the supervisor (`optask up`) with its children."""
