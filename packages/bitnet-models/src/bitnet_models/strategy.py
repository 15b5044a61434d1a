"""Which kind of model a run may use: a real GGUF, the mock model, or either (ADR 0001, part 4).

The strategy is a plain value; `bitnet_models.discovery.resolve_model` applies it.
"""

from __future__ import annotations

import enum


class ModelSelectionStrategy(str, enum.Enum):
    PREFER_REAL = "prefer_real"  # a real model if one is found, else the mock model (with a warning) where allowed
    FORCE_REAL = "force_real"  # a real model or an error that says how to get one
    MOCK_ONLY = "mock_only"  # always the mock model (fast tests, demos of the pipeline)
    ENVIRONMENT = "environment"  # whatever BITNET_MODEL_STRATEGY says (read by Settings; default prefer_real)

    def effective(self, from_environment: "ModelSelectionStrategy") -> "ModelSelectionStrategy":
        """This strategy with ENVIRONMENT replaced by the one the settings read from BITNET_MODEL_STRATEGY."""
        if self is ModelSelectionStrategy.ENVIRONMENT:
            if from_environment is ModelSelectionStrategy.ENVIRONMENT:
                return ModelSelectionStrategy.PREFER_REAL
            return from_environment
        return self


# The values BITNET_MODEL_STRATEGY accepts (`environment` would refer to itself).
ENV_STRATEGIES = tuple(s.value for s in ModelSelectionStrategy if s is not ModelSelectionStrategy.ENVIRONMENT)
