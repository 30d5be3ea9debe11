"""The operator's commands without a balancer: service files parse (and bad
ones give one line), argparse errors have no traceback, the ops modules'
doctests."""

from __future__ import annotations

import json

import pytest
from helpers import socklb_cli

from socklb import Affinity, Backend, Service
from socklb.errors import InvalidValueError
from socklb.ops import servicefile


def test_argparse_errors_have_no_traceback() -> None:
    r = socklb_cli("status")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--pin-dir" in r.stderr


def test_service_file_parsing() -> None:
    svcs = servicefile.parse(
        json.dumps(
            {
                "services": [
                    {
                        "address": "10.96.0.10",
                        "port": 80,
                        "algorithm": "maglev",
                        "affinity": {"timeout": 60},
                        "backends": [{"address": "10.244.1.2", "port": 8080, "state": "terminating", "id": 7}],
                    }
                ]
            }
        )
    )
    assert svcs == [
        Service("10.96.0.10", 80, "tcp", [Backend("10.244.1.2", 8080, state="terminating")], "maglev", Affinity(60))
    ]
    for bad in ('{"services": 3}', '[{"port": 80}]', '[{"address": "10.96.0.10", "port": 80, "backends": 1}]', "[1]"):
        with pytest.raises(InvalidValueError):
            servicefile.parse(bad)
    d = servicefile.diff(svcs, [])
    assert d["removed"] == ["10.96.0.10:80/tcp"] and d["unchanged"] == 0


def test_doctests_of_the_ops_modules() -> None:
    import doctest

    from socklb.ops import doctor, output, view

    for m in (servicefile, view, output, doctor):
        assert doctest.testmod(m, optionflags=doctest.ELLIPSIS).failed == 0, m.__name__
