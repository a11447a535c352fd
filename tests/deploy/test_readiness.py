"""A listener is ready only when the process we started holds the port and answers its protocol."""

import subprocess
import sys
import textwrap

import pytest

from local_network.readiness import Listener, port_in_use, ready
from tests.conftest import free_port, wait_for_port

PLAIN_TCP = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
time.sleep(120)
"""

ECHO_SCP = """
import sys
from pynetdicom import AE
from pynetdicom.sop_class import Verification
ae = AE(ae_title="ECHO_SCP"); ae.add_supported_context(Verification)
ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True)
"""


def start(code: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for_port(port, proc)
    return proc


@pytest.fixture
def plain_and_dicom():
    tcp_port, dicom_port = free_port(), free_port()
    plain = start(PLAIN_TCP, tcp_port)
    try:
        dicom = start(ECHO_SCP, dicom_port)
    except Exception:
        plain.kill()
        raise
    yield plain, tcp_port, dicom, dicom_port
    for p in (plain, dicom):
        p.kill()
        p.wait()


def test_an_open_port_that_does_not_answer_c_echo_is_not_a_ready_dicom_listener(plain_and_dicom):
    plain, tcp_port, _, _ = plain_and_dicom
    assert ready(plain.pid, "127.0.0.1", Listener("MLLP", tcp_port))
    assert not ready(plain.pid, "127.0.0.1", Listener("DICOM", tcp_port, "ECHO_SCP"))


def test_a_dicom_listener_is_ready_when_our_process_answers_c_echo(plain_and_dicom):
    _, _, dicom, dicom_port = plain_and_dicom
    assert ready(dicom.pid, "127.0.0.1", Listener("DICOM", dicom_port, "ECHO_SCP"))


def test_a_port_answered_by_another_process_does_not_make_ours_ready(plain_and_dicom):
    """A second xds-local must not take the first one's listeners for its own."""
    plain, tcp_port, dicom, dicom_port = plain_and_dicom
    assert not ready(plain.pid, "127.0.0.1", Listener("DICOM", dicom_port, "ECHO_SCP"))
    assert not ready(dicom.pid, "127.0.0.1", Listener("MLLP", tcp_port))


def test_port_in_use(plain_and_dicom):
    _, tcp_port, _, _ = plain_and_dicom
    assert port_in_use("127.0.0.1", tcp_port)
    assert not port_in_use("127.0.0.1", free_port())
