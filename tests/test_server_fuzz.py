"""A short schemathesis run over the OpenAPI schema: whatever the generated request, the server
answers below 500 (DESIGN.md: no 5xx under fuzzing). Driven through Hypothesis directly:
schemathesis' pytest plugin does not support this pytest."""
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.server_support import make_client

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def api(bundle_path, store_path):
    with make_client(bundle_path, store_path, max_upload_bytes=200_000) as client:
        yield schemathesis.openapi.from_asgi("/openapi.json", client.app)


def test_no_server_errors(api):
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) > 15
    statuses = []
    for operation in operations:
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            statuses.append(case.call_and_validate(checks=[not_a_server_error]).status_code)

        check()
    assert len(statuses) > 200 and 200 in statuses, "the fuzzer reached the handlers"
