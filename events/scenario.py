"""Scenario: the public face of one run's input (definitions in scenario_types / _file / _compile).

Rules (details in each module):
- scenario_types: frozen, slotted, validating dataclasses FaultSpec, Workload, Tolerance,
  Scenario; every error is ScenarioError(field_path, bad_value, accepted).
- scenario_file: canonical dict, YAML/JSON files, content hash, ScenarioBuilder.
- scenario_compile: the ordered input event log and the lossless way back.
"""

from events.scenario_compile import ARRIVAL_STREAM, compile_scenario, fault_from_event, scenario_from_events
from events.scenario_file import (ScenarioBuilder, dump_scenario, fault_to_dict, load_scenario, parse_scenario,
                                  scenario_hash, scenario_to_dict)
from events.scenario_types import (DEFAULT_SLOW_FACTOR, MAX_SHARDS, FaultSpec, Scenario, Tolerance,
                                   Workload)

__all__ = ["FaultSpec", "Workload", "Tolerance", "Scenario", "ScenarioBuilder", "parse_scenario",
           "scenario_to_dict", "fault_to_dict", "scenario_hash", "load_scenario", "dump_scenario",
           "compile_scenario", "scenario_from_events", "fault_from_event", "ARRIVAL_STREAM",
           "DEFAULT_SLOW_FACTOR", "MAX_SHARDS"]
