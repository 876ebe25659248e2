"""meshguard.schema.json accepts every shipped example and rejects bad configs
(structure, unknown keys, types, ranges), as an editor or CI would use it."""

import glob
import json
import os

import jsonschema
import pytest

import harness

with open(os.path.join(harness.ROOT, "meshguard.schema.json")) as f:
    SCHEMA = json.load(f)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(harness.ROOT, "examples", "*.json"))),
                         ids=os.path.basename)
def test_examples_validate(path):
    with open(path) as f:
        VALIDATOR.validate(json.load(f))


BAD = {
    "unknown_top_level_key": {"rout": []},
    "unknown_route_key": {"routes": [{"name": "a", "matcher": {}}]},
    "route_without_name": {"routes": [{"match": {}}]},
    "bad_route_name": {"routes": [{"name": "a.b"}]},
    "capacity_zero": {"routes": [{"name": "a", "rate_limit": [{"capacity": 0, "refill_interval": "1s"}]}]},
    "capacity_string": {"routes": [{"name": "a", "rate_limit": [{"capacity": "5", "refill_interval": "1s"}]}]},
    "bad_duration": {"routes": [{"name": "a", "rate_limit": [{"capacity": 5, "refill_interval": "5 minutes"}]}]},
    "bad_header_style": {"rate_limit_headers": "draft"},
    "max_keys_zero": {"max_rate_limit_keys": 0},
    "routes_not_array": {"routes": {}},
    "provider_without_jwks": {"jwt_providers": {"p": {"issuer": "x"}}},
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_configs_fail_the_schema(name):
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(BAD[name])
