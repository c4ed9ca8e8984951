def test_every_coordinator_command_has_a_world_action():
    from coordinator import commands as c
    from sim.world import SimWorld
    assert set(SimWorld._COMMANDS) == set(c.Command.__args__)
