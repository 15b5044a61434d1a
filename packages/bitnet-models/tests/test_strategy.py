"""ModelSelectionStrategy: values and how `environment` defers to BITNET_MODEL_STRATEGY."""

from __future__ import annotations

import pytest

from bitnet_models.settings import Settings
from bitnet_models.strategy import ENV_STRATEGIES, ModelSelectionStrategy as S

pytestmark = pytest.mark.fast


def test_values():
    assert [s.value for s in S] == ["prefer_real", "force_real", "mock_only", "environment"]
    assert ENV_STRATEGIES == ("prefer_real", "force_real", "mock_only")


@pytest.mark.parametrize("env", ["prefer_real", "force_real", "mock_only"])
def test_environment_takes_the_variable(env):
    from_env = Settings.from_env({"BITNET_MODEL_STRATEGY": env}).model_strategy
    assert S.ENVIRONMENT.effective(from_env) is S(env)


@pytest.mark.parametrize("explicit", [S.PREFER_REAL, S.FORCE_REAL, S.MOCK_ONLY])
def test_explicit_strategy_ignores_the_variable(explicit):
    assert explicit.effective(S.MOCK_ONLY if explicit is not S.MOCK_ONLY else S.FORCE_REAL) is explicit


def test_environment_without_variable_is_prefer_real():
    assert S.ENVIRONMENT.effective(Settings.from_env({}).model_strategy) is S.PREFER_REAL
    assert S.ENVIRONMENT.effective(S.ENVIRONMENT) is S.PREFER_REAL
