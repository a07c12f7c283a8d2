"""`deepfake-moe serve`: the predictor behind an HTTP API and a web page (needs the `serve` extra)."""
