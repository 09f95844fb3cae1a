"""Release to the Hugging Face Hub layout: a dataset folder of Parquet shards and a diffusers model
folder, each with a README whose YAML header the Hub reads. Sits above `cards` (it reuses them)."""
