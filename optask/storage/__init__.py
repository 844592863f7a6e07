"""Where processed minutes go: the raw archive, the Parquet dataset, the consolidated CSV, InfluxDB;
one store interface (`base`) and one call for all of them (`sinks`)."""
