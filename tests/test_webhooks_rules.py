"""Webhook rules: defaults, checks, and one clear sentence per mistake."""

from __future__ import annotations

import pytest

from reactorapp.config import ConfigError, load_config
from reactorapp.webhooks.rules import RetryPolicy, RuleError, parse_rule, rules_from_config
from reactorapp.webhooks.signing import sign, verify

BASE = {"name": "kitchen", "filters": ["sensors/kitchen/#"], "url": "https://example.com/hook"}


def rule(**fields):
    return parse_rule({**BASE, **fields})


def test_defaults():
    r = rule()
    assert (r.method, r.format, r.qos, r.timeout, r.max_concurrency, r.secret, r.headers) == (
        "POST", "json", 1, 10.0, 1, None, ())
    assert r.retry == RetryPolicy(10, 1.0, 300.0)


def test_everything_given_round_trips_through_json():
    data = {**BASE, "filters": ["a/+", "b/#"], "method": "put", "headers": {"X-Team": "ops"},
            "secret": "s", "timeout": 2.5, "max_concurrency": 4, "format": "raw", "qos": 0,
            "retry": {"max_attempts": 3, "base_delay": 0.5, "max_delay": 4}}
    r = parse_rule(data)
    assert r.method == "PUT" and r.headers == (("X-Team", "ops"),)
    assert parse_rule(r.to_dict(with_secret=True)) == r
    shown = r.to_dict()
    assert "secret" not in shown and shown["signed"] is True


def test_a_single_filter_may_be_a_string_and_duplicates_are_merged():
    assert rule(filters="a/b").filters == ("a/b",)
    assert rule(filters=["a", "a", "b"]).filters == ("a", "b")


@pytest.mark.parametrize("fields, message", [
    ({"nmae": "x"}, "Unknown field 'nmae' (did you mean 'name'?)"),
    ({"max-concurrency": 2}, "did you mean 'max_concurrency'?"),
    ({"retry": {"attempts": 2}}, "unknown field 'retry.attempts' (did you mean 'retry.max_attempts'?)"),
    ({"url": "ftp://example.com/"}, "'url' must be an http or https URL with a host"),
    ({"url": "http:///path"}, "with a host"),
    ({"url": "http://example.com:99999/"}, "'url' has a bad port"),
    ({"url": "http://exa mple.com/"}, "'url' must be an http or https URL"),
    ({"url": "http://example.com/#frag"}, "must not have a fragment"),
    ({"filters": ["a/#/b"]}, "'filters' has a bad topic filter: In the topic filter 'a/#/b'"),
    ({"filters": []}, "'filters' must be a non-empty list"),
    ({"method": "GET"}, "'method' must be one of 'POST', 'PUT', 'PATCH', not 'GET'"),
    ({"format": "xml"}, "'format' must be one of 'json', 'raw'"),
    ({"timeout": 0}, "'timeout' must be a number more than 0 and at most 300, not 0"),
    ({"timeout": True}, "'timeout' must be a number"),
    ({"max_concurrency": 0}, "'max_concurrency' must be a whole number from 1 to 64"),
    ({"qos": 2}, "'qos' must be a whole number from 0 to 1"),
    ({"headers": {"Idempotency-Key": "x"}}, "is set by reactorapp"),
    ({"headers": {"X-Reactorapp-Rule": "x"}}, "is set by reactorapp"),
    ({"headers": {"Bad Name": "x"}}, "invalid header name 'Bad Name'"),
    ({"headers": {"X-A": "a\r\nb"}}, "must be a string on one line"),
    ({"secret": ""}, "'secret' must be a non-empty string"),
    ({"retry": {"base_delay": 10, "max_delay": 5}}, "must not exceed 'retry.max_delay'"),
    ({"retry": {"max_attempts": 0}}, "'retry.max_attempts' must be a whole number from 1 to 100"),
])
def test_mistakes_are_named(fields, message):
    with pytest.raises(RuleError) as error:
        rule(**fields)
    assert message in str(error.value)


@pytest.mark.parametrize("data, message", [
    ([], "must be an object, not a list"),
    ({"filters": ["a"], "url": "http://h/"}, "needs a 'name'"),
    ({**BASE, "name": "a/b"}, "The rule name 'a/b' must be 1 to 64 letters"),
])
def test_bad_shapes(data, message):
    with pytest.raises(RuleError, match=message):
        parse_rule(data)


def test_the_name_in_the_path_wins_or_must_agree():
    assert parse_rule({k: v for k, v in BASE.items() if k != "name"}, name="n").name == "n"
    with pytest.raises(RuleError, match="differs from 'other'"):
        parse_rule(BASE, name="other")


def test_errors_name_the_rule():
    with pytest.raises(RuleError, match=r"^In webhook 'kitchen', 'url' is required\.$"):
        parse_rule({"name": "kitchen", "filters": ["a"]})


def test_backoff_is_exponential_capped_and_jittered():
    policy = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=10.0)
    assert [policy.delay(n, 1.0) for n in range(1, 6)] == [1, 2, 4, 8, 10]
    assert [policy.delay(n, 0.0) for n in range(1, 6)] == [0.5, 1, 2, 4, 5]


def test_config_file_rules(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text(
        'sys-interval = 0\n'
        '[[webhooks]]\nname = "a"\nfilters = ["x/#"]\nurl = "http://127.0.0.1:9/a"\n'
        'retry = { max_attempts = 3, base_delay = 0.1 }\n'
        '[[webhooks]]\nname = "b"\nfilters = "y"\nurl = "http://127.0.0.1:9/b"\nformat = "raw"\n')
    rules = load_config(str(path), {"webhooks": rules_from_config})["webhooks"]
    assert [r.name for r in rules] == ["a", "b"]
    assert rules[0].retry.max_attempts == 3 and rules[1].format == "raw"


@pytest.mark.parametrize("text, message", [
    ('webhooks = 3\n', "'webhooks' must be an array of tables"),
    ('[[webhooks]]\nname = "a"\nfilters = ["x"]\nurl = "gopher://h"\n',
     "[[webhooks]] table 1: in webhook 'a', 'url' must be an http or https URL"),
    ('[[webhooks]]\nname = "a"\nfilters = ["x"]\nurl = "http://h"\n' * 2,
     "[[webhooks]] table 2: the name 'a' is used twice"),
])
def test_config_file_mistakes(tmp_path, text, message):
    path = tmp_path / "hub.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(str(path), {"webhooks": rules_from_config})
    assert message in str(error.value) and str(path) in str(error.value)


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, b"{}") == "sha256=" + expected
    assert verify("k", "1700000000", b"{}", "sha256=" + expected)
    assert not verify("k", "not a number", b"{}", "sha256=" + expected)
