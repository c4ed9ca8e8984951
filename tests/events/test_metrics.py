def test_a_fault_scheduled_after_the_workload_ends_is_reported_as_not_fired():
    from events.scenario import parse_scenario
    from sim.profile import DEFAULT_PROFILE
    from sim.run import run_scenario, sim_result
    s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer", "workload": {"iterations": 5},
                        "faults": [{"type": "shard_error", "at_ms": 0.0, "shard": 1},
                                   {"type": "browser_crash", "at_ms": 600_000.0, "browser": "chromium"}]})
    res = sim_result(run_scenario(s), s, DEFAULT_PROFILE)
    assert [f["fault"] for f in res["faults_not_fired"]] == ["browser_crash"]
    nf = res["faults_not_fired"][0]
    assert nf["index"] == 1 and nf["at_ms"] == 600_000.0 and 0 < nf["run_ended_at_ms"] < 600_000.0
