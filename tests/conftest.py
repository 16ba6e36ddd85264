import pytest

pytest.register_assert_rewrite("tests.unit.smtp.transcript", "tests.unit.imap.harness", "tests.integration.harness")
