"""The consumer's tests run against the same real registry + repository processes."""

from tests.repository.conftest import network, repository_process  # noqa: F401 - fixtures
