

def test_detail_json_keeps_number_types_of_equal_values():
    # The converter caches detail JSON by field values; 1, 1.0 and True are equal keys in Python
    # but different JSON, so each must still come out as itself.
    from events.records import RequestSubmitted, to_event
    a = to_event(RequestSubmitted(0.0, request_id=1, batch_size=1, seq_len=128, client=0))
    b = to_event(RequestSubmitted(0.0, request_id=2, batch_size=1.0, seq_len=128, client=0))   # type: ignore[arg-type]
    c = to_event(RequestSubmitted(0.0, request_id=3, batch_size=True, seq_len=128, client=0))  # type: ignore[arg-type]
    assert [e.details()["batch_size"] for e in (a, b, c)] == [1, 1.0, True]
    assert [type(e.details()["batch_size"]) for e in (a, b, c)] == [int, float, bool]
