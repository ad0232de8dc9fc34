"""Study runner and CLI: YAML search spaces in, Ray Tune trials out, Parquet results."""
