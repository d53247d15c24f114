"""Fuzz every operation of /openapi.json with schemathesis (bounded, derandomized examples) against the ASGI app:
no 5xx, every answer conforms to the schema (status codes, content types, headers, bodies), and data the schema
forbids is refused.

Not checked: that every schema-valid request is accepted (schemathesis' positive_data_acceptance). The service
refuses schema-valid requests on purpose: an ungranted experiment (403), a stream that already ended (409), cross-field
rules a JSON schema cannot state (a source reading one run asked for two, 'batch' not last, tail and head together).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from tests.api.harness import ApiHarness, Pki
from tests.store.databases import DatabaseSpec

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzzed(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHarness]:
    root = tmp_path_factory.mktemp("fuzz")
    spec = DatabaseSpec("sqlite", root)
    harness = ApiHarness(spec, pki, root / "state")
    harness.services().policy.grant("identity", "root", "*")  # admin with every experiment: the deepest paths
    yield harness
    harness.close()
    spec.close()


@pytest.fixture(scope="module")
def api_schema(fuzzed: ApiHarness) -> schemathesis.BaseSchema:
    token = fuzzed.pki.token("root", lifetime_s=30 * 86400)
    config = SchemathesisConfig.from_dict(
        {
            # the coverage phase enumerates boundary cases without a bound on their number; fuzzing takes MAX_EXAMPLES
            "phases": {"coverage": {"enabled": False}},
            "auth": {"openapi": {"HTTPBearer": {"bearer": token}}},  # the scheme /openapi.json declares
        }
    )
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed.app, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_no_schema_violations(case: schemathesis.Case) -> None:
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


def test_the_fuzzing_ran_authenticated_as_far_as_creating_streams(fuzzed: ApiHarness) -> None:
    """Runs after the fuzzing above (same module): the generated calls got past authentication."""
    allowed = {
        e.action for e in fuzzed.services().policy.audit_entries(identity="root", limit=5000) if e.outcome == "allow"
    }
    assert {"stream.create", "stream.list", "policy.grant"} <= allowed
