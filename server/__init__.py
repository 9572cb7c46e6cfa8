"""The mmserve inference server: FastAPI routes -> per-model dynamic batcher -> backend."""
