"""The real kube-apiserver fixtures of tests/kubernetes, for the tests that apply deploy/.

Re-exported, not copied: pytest finds fixtures by conftest location, and tests/deploy is not
under tests/kubernetes. A run of both directories starts one session server for each.
"""

from tests.kubernetes.conftest import kube_apiserver, kube_apiserver_factory

__all__ = ["kube_apiserver", "kube_apiserver_factory"]
