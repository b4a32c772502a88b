"""Hermetic test environment: no hub, no telemetry, DeepSpeed on CPU (env-notes §8)."""

import os

os.environ.update(
    DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
    GX_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1",
    PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
)
