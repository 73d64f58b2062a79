"""The main job: one YAML -> corpus, DoReMi and DoGE weights, the main arms, and the report."""

from mixweight.pipeline.config import PipelineConfig, load_pipeline_config
from mixweight.pipeline.run import run_pipeline

__all__ = ["PipelineConfig", "load_pipeline_config", "run_pipeline"]
