"""Where processed minutes go: raw archive, Parquet dataset, consolidated CSV, InfluxDB."""
