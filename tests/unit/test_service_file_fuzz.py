"""Malformed service files never raise anything but a one-line
InvalidValueError (issue 22, defect 3): addresses of the wrong type, documents
nested too deeply for the parsers, and a property-based fuzz over JSON and
YAML documents, against the parser and a few through ``socklb apply``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

import pytest
from helpers import one_line_error, socklb_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socklb import Service
from socklb.errors import InvalidValueError
from socklb.ops import servicefile

yaml = pytest.importorskip("yaml")

_FIELDS = ["address", "port", "protocol", "backends", "algorithm", "affinity", "terminate_tcp", "frontend"]
_BE = ["address", "port", "weight", "state"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["10.96.0.10", "::", "0.0.0.0", "fd00::a", "tcp", "udp", "maglev", "node_port", "terminating"]),
)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)
backend = st.dictionaries(st.sampled_from([*_BE, "id", "bogus"]), values, max_size=5)
service = st.dictionaries(st.sampled_from([*_FIELDS, "selections"]), values | st.lists(backend, max_size=3), max_size=8)
documents = st.one_of(
    values,
    st.lists(service, max_size=3),
    st.fixed_dictionaries({"services": st.lists(service, max_size=3) | values}),
)


def _parses_or_says_why(text: str, name: str) -> None:
    try:
        got = servicefile.parse(text, name)
    except InvalidValueError as e:
        assert "\n" not in str(e), str(e)
        return
    assert isinstance(got, list) and all(isinstance(s, Service) for s in got)


@settings(derandomize=True, database=None, max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents)
def test_fuzz_json_documents(doc: Any) -> None:
    _parses_or_says_why(json.dumps(doc), "f.json")


@settings(derandomize=True, database=None, max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents)
def test_fuzz_yaml_documents(doc: Any) -> None:
    _parses_or_says_why(yaml.safe_dump(doc), "f.yaml")


@settings(derandomize=True, database=None, max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=60))
def test_fuzz_text(text: str) -> None:
    _parses_or_says_why(text, "f.yaml")


@pytest.mark.parametrize(
    "text,name,needle",
    [
        ('[{"address": ["10.96.0.10"], "port": 80}]', "f.json", "services[0].address"),
        ('[{"address": {"a": 1}, "port": 80}]', "f.json", "services[0].address"),
        ('[{"address": "10.96.0.10", "port": 80, "backends": [{"address": [1], "port": 1}]}]', "f.json", "address"),
        ("[" * 100_000 + "]" * 100_000, "f.json", "nested too deeply"),
        ("- " * 3000 + "x", "f.yaml", "nested too deeply"),
        ("[" * 3000 + "]" * 3000, "f.yaml", "nested too deeply"),
    ],
)
def test_malformed_files_are_one_clear_error(text: str, name: str, needle: str) -> None:
    with pytest.raises(InvalidValueError) as e:
        servicefile.parse(text, name)
    assert needle in str(e.value) and "\n" not in str(e.value)


def _malformed() -> List[str]:
    return [
        '[{"address": ["10.96.0.10"], "port": 80}]',
        "[" * 100_000 + "]" * 100_000,
        "services:\n" + "- " * 3000 + "x\n",
        '{"services": [{"address": "10.96.0.10", "port": 1e999}]}',
        "services: [{address: 10.96.0.10, port: 80, backends: {address: 10.244.0.1}}]",
    ]


@pytest.mark.parametrize("i", range(len(_malformed())))
def test_malformed_files_through_the_cli(tmp_path: Path, i: int) -> None:
    f = tmp_path / ("f.json" if _malformed()[i].startswith(("[", "{")) else "f.yaml")
    f.write_text(_malformed()[i])
    for extra in (["--dry-run"], []):
        one_line_error(socklb_cli("apply", "-f", str(f), *extra), "socklb apply")
