"""A short schemathesis run over the whole OpenAPI schema with the response-conformance checks
on: whatever the generated request, the server answers below 500 (docs/design.md, "Targets": no 5xx under
fuzzing) with a status code, media type and body that the OpenAPI document declares for that
operation (docs/reliability.md, "Schemathesis"). Driven through Hypothesis directly:
schemathesis' pytest plugin does not support this pytest."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server_support import make_client

EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api(bundle_path, store_path):
    with make_client(bundle_path, store_path, max_upload_mb=0.2) as client:
        yield schemathesis.openapi.from_asgi("/openapi.json", client.app)


def test_responses_conform_to_the_openapi_document(api):
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) > 15
    statuses = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy())
        def check(case):
            # An allowed Host: TileJSON, WMTS and query links are refused (400) for others.
            statuses.append(case.call_and_validate(headers={"Host": "localhost"}, checks=CHECKS).status_code)

        check()
    assert len(statuses) > 200 and 200 in statuses, "the fuzzer reached the handlers"
