"""common.records.from_attributes: a filter or limits record read by field name from options or config."""

from __future__ import annotations

import argparse
import dataclasses

from collector.config import CollectorConfig
from collector.store import AlertFilter
from collector.streamlimits import StreamLimits
from common.records import from_attributes


def test_fields_are_read_by_name_given_ones_win_and_the_rest_keep_defaults() -> None:
    args = argparse.Namespace(statuses=["open"], users=["bob"], unrelated=1)
    assert from_attributes(AlertFilter, args, severities=["high"]) == AlertFilter(
        statuses=["open"], severities=["high"], users=["bob"]
    )


def test_every_stream_limit_is_a_config_key() -> None:
    # The collector's stream limits are read from collector.yaml by name: none may fall back to
    # its default because the config spells it otherwise.
    keys = set(CollectorConfig.model_fields)
    assert {f.name for f in dataclasses.fields(StreamLimits)} <= keys
