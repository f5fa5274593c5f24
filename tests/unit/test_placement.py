"""``runtime.placement``: what each role's actors ask of Ray on a cluster."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.config import PipelineConfig


def config(placement: dict[str, object]) -> PipelineConfig:
    return PipelineConfig.model_validate({"name": "p", "source": {"kind": "synthetic"},
                                          "runtime": {"placement": placement}})


def test_placement_by_custom_resources_and_spread_become_ray_options() -> None:
    placement = config({"strategy": "spread", "scoring": {"riffle-scorer": 1},
                        "ingest": {"riffle-ingest": 0.5}}).runtime.placement
    assert placement.options("scoring") == {"resources": {"riffle-scorer": 1.0},
                                            "scheduling_strategy": "SPREAD"}
    assert placement.options("ingest") == {"resources": {"riffle-ingest": 0.5},
                                           "scheduling_strategy": "SPREAD"}
    assert placement.options("sink") == {"scheduling_strategy": "SPREAD"}


def test_placement_default_asks_nothing_of_ray() -> None:
    placement = config({}).runtime.placement
    assert all(placement.options(role) == {} for role in ("ingest", "scoring", "sink"))


@pytest.mark.parametrize("bad", [{"strategy": "pack"}, {"scoring": {"riffle-scorer": 0}},
                                 {"scoring": {"riffle-scorer": -1}}, {"supervisor": {"x": 1}}])
def test_placement_bad_value_is_refused_naming_the_field(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=r"runtime\.placement"):
        config(bad)
