"""Tests for greenbus.topics: the topic grammar and the TopicIndex trie.

Pure: no gevent, no I/O.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenbus.exceptions import GreenbusError, InvalidTopic
from greenbus.topics import (
    TopicIndex,
    is_wildcard,
    pattern_matches,
    validate_pattern,
    validate_topic,
)

VALIDATORS = [validate_topic, validate_pattern]


def problem_of(validator, value) -> str:
    with pytest.raises(InvalidTopic) as info:
        validator(value)
    return info.value.problem


# -- validation: what both topics and patterns reject -------------------------


@pytest.mark.parametrize("validator", VALIDATORS)
@pytest.mark.parametrize("value", ["a", "sensors.room1.temp", "A-b_c:d/e", "héllo.wörld", "1.2.3"])
def test_valid_concrete_topics_are_returned_unchanged(validator, value):
    assert validator(value) is value


@pytest.mark.parametrize("validator", VALIDATORS)
@pytest.mark.parametrize(
    ("value", "type_name"),
    [(None, "NoneType"), (42, "int"), (b"a.b", "bytes"), (["a"], "list"), (1.5, "float")],
)
def test_a_non_str_is_rejected_naming_its_type(validator, value, type_name):
    problem = problem_of(validator, value)
    assert "must be a str" in problem
    assert type_name in problem


@pytest.mark.parametrize("validator", VALIDATORS)
def test_the_empty_string_is_rejected_as_empty(validator):
    assert "must not be empty" in problem_of(validator, "")


@pytest.mark.parametrize("validator", VALIDATORS)
@pytest.mark.parametrize(
    ("value", "position"),
    [(".", 0), (".a", 0), ("a.", 1), ("a..b", 1), ("a.b.", 2), ("*..>", 1)],
)
def test_an_empty_token_is_rejected_with_its_position(validator, value, position):
    problem = problem_of(validator, value)
    assert "empty token" in problem
    assert f"position {position}" in problem


@pytest.mark.parametrize("validator", VALIDATORS)
@pytest.mark.parametrize(
    ("value", "char", "index"),
    [
        (" a", " ", 0),
        ("a b", " ", 1),
        ("a.b\t", "\t", 3),
        ("a\nb", "\n", 1),
        ("a\rb", "\r", 1),
        ("a\u00a0b", "\u00a0", 1),  # no-break space
        ("a\u2028b", "\u2028", 1),  # line separator
        ("a\x00b", "\x00", 1),
        ("a\x1bb", "\x1b", 1),
        ("a\x7fb", "\x7f", 1),
    ],
)
def test_whitespace_and_control_characters_are_rejected_with_their_index(
    validator, value, char, index
):
    problem = problem_of(validator, value)
    assert "whitespace or control character" in problem
    assert repr(char) in problem
    assert f"index {index}" in problem


@pytest.mark.parametrize("validator", VALIDATORS)
def test_c1_control_characters_are_rejected_like_ascii_ones(validator):
    # The module docstring promises "no whitespace or control characters";
    # U+0080..U+009F are control characters (Unicode category Cc) too.  U+009B
    # is the one-byte CSI that starts terminal escape sequences.
    problem = problem_of(validator, "a\x9bb")
    assert "control character" in problem


@pytest.mark.parametrize("validator", VALIDATORS)
def test_the_first_problem_found_is_the_one_reported(validator):
    # Type before emptiness before characters before tokens.
    assert "whitespace" in problem_of(validator, "a. .b")


# -- validation: topics ---------------------------------------------------------


@pytest.mark.parametrize("topic", ["*", ">", "a.*", "a.>", "*.b", "a.*.c"])
def test_a_topic_with_a_wildcard_token_is_rejected_as_pattern_only(topic):
    problem = problem_of(validate_topic, topic)
    assert "only allowed in subscription patterns" in problem


@pytest.mark.parametrize("topic", ["room*", "a.b>c", "*a", "a.>>", "a.**"])
def test_a_topic_with_a_wildcard_character_inside_a_token_is_rejected(topic):
    assert "reserved for wildcards" in problem_of(validate_topic, topic)


def test_invalid_topic_is_a_value_error_carrying_the_topic_and_the_problem():
    with pytest.raises(InvalidTopic) as info:
        validate_topic("a..b")
    exc = info.value
    assert isinstance(exc, ValueError)
    assert isinstance(exc, GreenbusError)
    assert exc.topic == "a..b"
    assert str(exc) == f"invalid topic 'a..b': {exc.problem}"


# -- validation: patterns -------------------------------------------------------


@pytest.mark.parametrize(
    "pattern", ["*", ">", "a.*", "a.>", "*.b", "*.*.*", "a.*.>", "*.>", "sensors.*.temp"]
)
def test_whole_token_wildcards_are_valid_patterns(pattern):
    assert validate_pattern(pattern) is pattern


@pytest.mark.parametrize("pattern", [">.a", "a.>.b", ">.>", "a.>.*"])
def test_a_pattern_with_gt_before_the_last_token_is_rejected(pattern):
    assert problem_of(validate_pattern, pattern) == "'>' must be the last token"


@pytest.mark.parametrize(
    ("pattern", "token"),
    [("room*", "room*"), ("a.b>c", "b>c"), ("*a.b", "*a"), ("a.**", "**"), ("a.>>", ">>")],
)
def test_a_pattern_with_a_wildcard_inside_a_token_is_rejected_naming_the_token(pattern, token):
    problem = problem_of(validate_pattern, pattern)
    assert "wildcard inside token" in problem
    assert repr(token) in problem


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("a.b", False), ("a.*", True), ("a.>", True), ("*", True), ("room*x", False)],
)
def test_is_wildcard_is_true_only_for_whole_wildcard_tokens(pattern, expected):
    assert is_wildcard(pattern) is expected


# -- the reference matcher --------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b", "a.b.c", False),
        ("a.b.c", "a.b", False),
        ("sensors.*.temp", "sensors.room1.temp", True),
        ("sensors.*.temp", "sensors.temp", False),
        ("sensors.*.temp", "sensors.a.b.temp", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("sensors.>", "sensors.room1", True),
        ("sensors.>", "sensors.room1.temp", True),
        ("sensors.>", "sensors", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("*.>", "a", False),
        ("*.>", "a.b", True),
        ("a.*.>", "a.b", False),
        ("a.*.>", "a.b.c.d", True),
    ],
)
def test_pattern_matches_follows_nats_semantics(pattern, topic, expected):
    assert pattern_matches(pattern, topic) is expected


# -- TopicIndex: matching ----------------------------------------------------------


def matched_by(pattern, topics):
    """Which of ``topics`` an index holding only ``pattern`` matches.

    A match must give the pattern's one value, and a miss nothing at all.
    """
    index = TopicIndex()
    index.add(pattern, "v")
    found = {topic: index.match(topic) for topic in topics}
    assert set(found.values()) <= {("v",), ()}, found
    return [topic for topic in topics if found[topic]]


def test_an_exact_pattern_matches_only_its_own_topic():
    assert matched_by("a.b", ["a.b", "a", "a.b.c", "a.c"]) == ["a.b"]


def test_star_matches_exactly_one_token():
    topics = ["sensors.room1.temp", "sensors.room2.temp", "sensors.temp", "sensors.a.b.temp"]
    assert matched_by("sensors.*.temp", topics) == ["sensors.room1.temp", "sensors.room2.temp"]


def test_gt_matches_one_or_more_trailing_tokens_but_not_the_prefix_alone():
    assert matched_by("a.>", ["a.b", "a.b.c.d", "a", "b.a"]) == ["a.b", "a.b.c.d"]


def test_a_lone_gt_matches_every_topic():
    assert matched_by(">", ["a", "x.y.z"]) == ["a", "x.y.z"]


def test_results_come_in_insertion_order_whatever_the_pattern_shape():
    index = TopicIndex()
    patterns = [">", "a.b.c", "a.*.c", "*.b.>", "a.>", "*.*.*", "a.b.*", "a.b.c"]
    for i, pattern in enumerate(patterns):
        index.add(pattern, i)
    assert index.match("a.b.c") == tuple(range(len(patterns)))
    assert index.match_uncached("a.b.c") == tuple(range(len(patterns)))


def test_the_same_value_is_returned_once_per_matching_pattern():
    index = TopicIndex()
    value = object()
    index.add("a.b", value)
    index.add("a.*", value)
    index.add("x.y", value)
    assert index.match("a.b") == (value, value)
    assert index.match("a.c") == (value,)
    assert len(index) == 3
    assert index.patterns() == {"a.b": 1, "a.*": 1, "x.y": 1}


def test_the_same_value_added_twice_under_one_pattern_is_counted_and_removed_one_at_a_time():
    index = TopicIndex()
    value = object()
    index.add("a", value)
    index.add("a", value)
    assert index.match("a") == (value, value)
    assert index.patterns() == {"a": 2}
    assert index.remove("a", value)
    assert index.match("a") == (value,)
    assert index.patterns() == {"a": 1}


def test_match_rejects_an_invalid_topic():
    index = TopicIndex()
    index.add(">", "v")
    for topic in ["a.*", "a..b", "", "a b", None, ["a"]]:
        with pytest.raises(InvalidTopic):
            index.match(topic)
        with pytest.raises(InvalidTopic):
            index.match_uncached(topic)
    assert index.cache == {}


def test_add_rejects_an_invalid_pattern_and_leaves_the_index_unchanged():
    index = TopicIndex()
    for pattern in ["a.>.b", "room*", "", "a..b"]:
        with pytest.raises(InvalidTopic):
            index.add(pattern, "v")
    assert len(index) == 0
    assert index.patterns() == {}
    assert list(index) == []


def test_iteration_yields_every_pattern_value_pair():
    index = TopicIndex()
    pairs = [("a.b", 1), ("a.*", 2), ("a.>", 3), (">", 4), ("*", 5), ("a.b", 6)]
    for pattern, value in pairs:
        index.add(pattern, value)
    assert sorted(index) == sorted(pairs)


def test_repr_shows_patterns_values_and_cache_size():
    index = TopicIndex()
    index.add("a", 1)
    index.add("a", 2)
    index.add("b.*", 3)
    index.match("a")
    assert repr(index) == "<TopicIndex patterns=2 values=3 cached=1>"


@pytest.mark.parametrize("cache_size", [0, -1, 1.5, "10", None])
def test_an_invalid_cache_size_is_rejected(cache_size):
    with pytest.raises(ValueError, match="cache_size"):
        TopicIndex(cache_size=cache_size)


# -- TopicIndex: removal and pruning -------------------------------------------------


def test_remove_takes_out_one_value_and_reports_it():
    index = TopicIndex()
    a, b = object(), object()
    index.add("a.*", a)
    index.add("a.*", b)
    assert index.remove("a.*", a) is True
    assert index.match("a.x") == (b,)
    assert index.patterns() == {"a.*": 1}


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        ("a.b", "other"),  # pattern present, value not under it
        ("a.c", "v"),  # exact pattern never added
        ("a.b.c", "v"),  # deeper than anything added
        ("a", "v"),  # an interior node, not a pattern
        ("a.*", "v"),  # wildcard never added
        ("a.>", "v"),
        ("*.b", "v"),
        ("a.b.>", "v"),
    ],
)
def test_remove_returns_false_when_the_value_is_not_under_the_pattern(pattern, value):
    index = TopicIndex()
    index.add("a.b", "v")
    assert index.remove(pattern, value) is False
    assert index.match("a.b") == ("v",)
    assert index.patterns() == {"a.b": 1}


def test_removing_a_value_twice_returns_false_the_second_time():
    index = TopicIndex()
    value = object()
    index.add("a.>", value)
    assert index.remove("a.>", value) is True
    assert index.remove("a.>", value) is False
    assert index.match("a.b") == ()


def test_removing_a_longer_pattern_keeps_its_prefix_pattern():
    index = TopicIndex()
    index.add("a.b", 1)
    index.add("a.b.c", 2)
    index.add("a.>", 3)
    assert index.remove("a.b.c", 2)
    assert index.match("a.b") == (1, 3)
    assert index.remove("a.>", 3)
    assert index.match("a.b") == (1,)
    assert index.match("a.b.c") == ()
    assert sorted(index) == [("a.b", 1)]


def test_a_churn_of_unique_patterns_leaves_the_trie_empty():
    index = TopicIndex()
    added = []
    for i in range(300):
        for pattern in (f"t{i}", f"t.{i}.x", f"t.*.{i}", f"u.{i}.>", f"*.{i}.*.>"):
            value = object()
            index.add(pattern, value)
            added.append((pattern, value))
    assert len(index) == len(added)
    index.match("t.7.x")
    for pattern, value in added:
        assert index.remove(pattern, value)
    assert list(index) == []
    assert index.patterns() == {}
    assert len(index) == 0
    assert index.match("t.7.x") == ()
    # list() and patterns() cannot tell a pruned trie from a trie full of empty
    # nodes; the root having no branches left is the observable of pruning.
    assert index._root.empty()


# -- TopicIndex: the cache ----------------------------------------------------------


def test_match_caches_the_result_per_topic():
    index = TopicIndex()
    index.add("a.*", 1)
    result = index.match("a.b")
    assert index.cache == {"a.b": (1,)}
    assert index.match("a.b") is result


def test_adding_an_exact_pattern_is_seen_by_the_next_match_and_evicts_only_its_topic():
    index = TopicIndex()
    index.add("a.*", 1)
    assert index.match("a.b") == (1,)
    assert index.match("a.c") == (1,)
    index.add("a.b", 2)
    assert "a.c" in index.cache
    assert "a.b" not in index.cache
    assert index.match("a.b") == (1, 2)
    assert index.match("a.c") == (1,)


def test_removing_an_exact_pattern_is_seen_by_the_next_match():
    index = TopicIndex()
    index.add("a.b", 1)
    index.add("a.*", 2)
    assert index.match("a.b") == (1, 2)
    assert index.remove("a.b", 1)
    assert index.match("a.b") == (2,)


@pytest.mark.parametrize("pattern", ["a.*", "a.>", "*.b", ">", "*.*"])
def test_adding_and_removing_a_wildcard_is_seen_by_the_next_match(pattern):
    index = TopicIndex()
    index.add("a.b", 1)
    assert index.match("a.b") == (1,)
    assert index.match("x.y.z") == ()
    index.add(pattern, 2)
    assert index.match("a.b") == (1, 2)
    assert index.match("x.y.z") == ((2,) if pattern == ">" else ())
    assert index.remove(pattern, 2)
    assert index.match("a.b") == (1,)
    assert index.match("x.y.z") == ()


def test_a_failed_remove_keeps_the_cache_correct():
    index = TopicIndex()
    index.add("a.*", 1)
    assert index.match("a.b") == (1,)
    assert index.remove("a.*", 2) is False
    assert index.match("a.b") == (1,)


def test_the_cache_stays_bounded_by_cache_size():
    index = TopicIndex(cache_size=8)
    index.add("t.>", "v")
    for i in range(500):
        assert index.match(f"t.{i}") == ("v",)
        assert len(index.cache) <= 8
    assert len(index.cache) >= 1


def test_the_cache_is_the_same_dict_for_the_life_of_the_index():
    index = TopicIndex(cache_size=2)
    cache = index.cache
    index.add("a.*", 1)
    for topic in ["a.b", "a.c", "a.d"]:
        index.match(topic)
    index.add("b.*", 2)
    assert index.cache is cache


def test_match_uncached_agrees_with_match_and_leaves_the_cache_alone():
    index = TopicIndex()
    for i, pattern in enumerate(["a.b", "a.*", "a.>", "*.b", ">", "b.c"]):
        index.add(pattern, i)
    for topic in ["a", "a.b", "a.c", "b.b", "b.c", "a.b.c"]:
        assert index.match_uncached(topic) == index.match(topic)
    index.cache.clear()
    index.match_uncached("a.b")
    assert index.cache == {}


# -- properties ----------------------------------------------------------------------

TOKENS = ["a", "b", "c"]

literal_tokens = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4)
topics = literal_tokens.map(".".join)


@st.composite
def patterns(draw):
    tokens = draw(st.lists(st.sampled_from([*TOKENS, "*"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        tokens[-1] = ">"
    return ".".join(tokens)


def expected_values(entries, topic):
    return tuple(value for pattern, value in entries if pattern_matches(pattern, topic))


@settings(max_examples=200)
@given(
    entries=st.lists(patterns(), min_size=0, max_size=12),
    probe=st.lists(topics, min_size=1, max_size=8),
    data=st.data(),
)
def test_index_agrees_with_the_reference_matcher_through_adds_and_removals(entries, probe, data):
    index = TopicIndex(cache_size=data.draw(st.integers(1, 6), label="cache_size"))
    live = []
    for i, pattern in enumerate(entries):
        pair = (pattern, ("value", i))  # a distinct object per entry
        index.add(pattern, pair[1])
        live.append(pair)
        # Match after every add, so stale cache entries would show.
        for topic in probe:
            assert index.match(topic) == expected_values(live, topic)

    victims = data.draw(st.permutations(range(len(live))), label="removal order")
    count = data.draw(st.integers(0, len(live)), label="removals")
    for position in victims[:count]:
        pattern, value = live_pair = next(p for p in live if p[1][1] == position)
        assert index.remove(pattern, value) is True
        live.remove(live_pair)
        for topic in probe:
            assert index.match(topic) == expected_values(live, topic)
            assert index.match_uncached(topic) == expected_values(live, topic)

    assert sorted(index, key=repr) == sorted(live, key=repr)
    assert sum(index.patterns().values()) == len(live) == len(index)


@given(pattern=patterns(), topic=topics)
def test_a_lone_pattern_matches_exactly_when_the_reference_says_so(pattern, topic):
    index = TopicIndex()
    index.add(pattern, "v")
    assert (index.match(topic) == ("v",)) is pattern_matches(pattern, topic)


arbitrary_objects = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.binary(),
    st.lists(st.text(max_size=3), max_size=3),
    st.tuples(st.text(max_size=3)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(object),
)


@pytest.mark.parametrize("validator", VALIDATORS)
@given(value=st.one_of(st.text(), st.text(alphabet="ab.*> \t", max_size=8), arbitrary_objects))
def test_validators_raise_nothing_but_invalid_topic(validator, value):
    try:
        result = validator(value)
    except InvalidTopic as exc:
        assert exc.topic is value
        assert exc.problem
        assert exc.problem in str(exc)
    else:
        assert result is value
        assert isinstance(value, str)
        assert value
        assert "" not in value.split(".")
        assert not any(char.isspace() for char in value)


@given(value=st.text(alphabet="ab.*> ", max_size=8))
def test_every_valid_topic_is_a_valid_pattern_without_wildcards(value):
    try:
        validate_topic(value)
    except InvalidTopic:
        return
    assert validate_pattern(value) is value
    assert not is_wildcard(value)
    assert "*" not in value and ">" not in value


def test_a_full_route_cache_evicts_its_oldest_topic_and_keeps_the_rest():
    index: TopicIndex[str] = TopicIndex(cache_size=3)
    index.add("a.*", "v")
    for topic in ("a.1", "a.2", "a.3", "a.4"):
        assert index.match(topic) == ("v",)
    assert list(index.cache) == ["a.2", "a.3", "a.4"]
    index.add("a.4", "w")  # an exact pattern invalidates its own topic only
    assert list(index.cache) == ["a.2", "a.3"]
    assert index.match("a.4") == ("v", "w")
