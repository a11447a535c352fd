"""``xds-consumer find`` by a hospital number: resolved to the affinity domain id by PIX (ITI-9)
at the registry, through the CLI against real registry and repository processes."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from hl7.mllp import open_hl7_connection

from consumer.client.patient import (
    PatientIdUnresolved,
    ResolvedPatientId,
    default_mllp_address,
    local_decision,
    parse_address,
)
from ihe.hl7 import get, parse_message
from ihe.metadata.model import Identifiable
from ihe.nhs import NHS_NUMBER_OID, nhs_check_digit
from tests.consumer.test_cli import run

HOSPITAL_OID = "1.2.826.0.1.999.7"


def new_nhs_number() -> str:
    while True:
        first = f"9{uuid.uuid4().int % 10**8:08d}"
        check = nhs_check_digit(first)
        if check is not None:
            return f"{first}{check}"


async def feed(mllp_port: int, pid3: str) -> None:
    """ITI-8 ADT^A01 to the registry's MLLP listener, as a hospital's PAS sends it."""
    text = "\r".join([
        f"MSH|^~\\&|PAS|HOSP|XDS-REG|NET|20240105120000||ADT^A01^ADT_A01|{uuid.uuid4().hex[:12]}|P|2.5",
        "EVN|A01|20240105120000", f"PID|||{pid3}||Find^Me||19800102|F", "PV1||O"]) + "\r"
    reader, writer = await open_hl7_connection("127.0.0.1", mllp_port)
    try:
        writer.writeblock(text.encode())
        await writer.drain()
        ack = parse_message((await asyncio.wait_for(reader.readblock(), 10)).decode())
    finally:
        writer.close()
    assert get(ack, "MSA.F1") == "AA", str(ack)


async def test_find_by_hospital_number_resolves_through_pix(network, tmp_path):
    registry, repo = network.registry, network.repository
    nhs, hospital = new_nhs_number(), f"H{uuid.uuid4().hex[:8].upper()}"
    nhs_cx = f"{nhs}^^^&{NHS_NUMBER_OID}&ISO"
    hospital_cx = f"{hospital}^^^HOSP&{HOSPITAL_OID}&ISO"
    await feed(registry.mllp_port, f"{nhs}^^^NHS&{NHS_NUMBER_OID}&ISO~{hospital_cx}")
    (tmp_path / "report.txt").write_text("report")
    done = run("submit", "--repository", repo.url, "--patient-id", nhs_cx, str(tmp_path / "report.txt"))
    assert done.returncode == 0, done.stdout + done.stderr
    (uid,) = re.findall(r"uniqueId (\S+) entryUUID", done.stdout)
    pix = f"127.0.0.1:{registry.mllp_port}"

    done = run("find", "--registry", registry.url, "--pix-address", pix, "--patient-id", hospital_cx)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"patient id: {hospital_cx} resolved by PIX query at {pix}: querying with {nhs_cx}"
    assert lines[1] == "1 document(s)" and lines[2].startswith(f"{uid}  repository {repo.repository_unique_id}")

    # The affinity domain id itself: no PIX query (an unreachable PIX address does not matter).
    done = run("find", "--registry", registry.url, "--pix-address", "127.0.0.1:9", "--patient-id", nhs_cx)
    assert done.returncode == 0 and done.stdout.splitlines()[0] == "1 document(s)", done.stdout + done.stderr
    # A bare NHS number is taken as one, and said so.
    done = run("find", "--registry", registry.url, "--patient-id", nhs)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:2] == [f"patient id: {nhs} is an NHS number: querying with {nhs_cx}",
                                            "1 document(s)"]


async def test_unresolvable_ids_say_which_id_to_use(network):
    registry = network.registry
    pix = f"127.0.0.1:{registry.mllp_port}"
    unknown = f"NOBODY{uuid.uuid4().hex[:6]}^^^&{HOSPITAL_OID}&ISO"
    done = run("find", "--registry", registry.url, "--pix-address", pix, "--patient-id", unknown)
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"xds-consumer find: {unknown} has no cross-reference to affinity domain "
                           f"{NHS_NUMBER_OID} at the registry ({pix})")
    assert f"'<id>^^^&{NHS_NUMBER_OID}&ISO'" in line

    # A hospital number known only locally (no NHS number fed yet): the same answer.
    local = f"L{uuid.uuid4().hex[:8]}^^^&{HOSPITAL_OID}&ISO"
    await feed(registry.mllp_port, local)
    done = run("find", "--registry", registry.url, "--pix-address", pix, "--patient-id", local)
    assert done.returncode == 1 and "has no cross-reference" in done.stderr and len(done.stderr.splitlines()) == 1

    done = run("find", "--registry", registry.url, "--pix-address", "127.0.0.1:9", "--patient-id", unknown)
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert "PIX query at 127.0.0.1:9 to resolve it failed" in line and "Traceback" not in done.stderr

    done = run("find", "--registry", registry.url, "--patient-id", "A100")  # no authority, no NHS number
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1 and "names no assigning authority" in done.stderr

    done = run("find", "--registry", registry.url, "--pix-address", "nowhere", "--patient-id", unknown)
    assert done.returncode == 2 and "HOST:PORT" in done.stderr


def test_default_mllp_address_and_local_decisions():
    assert default_mllp_address("http://registry.example.org:8010/registry") == ("registry.example.org", 2575)
    assert default_mllp_address("https://[::1]:8443/registry") == ("::1", 2575)
    assert parse_address("10.0.0.1:3000") == ("10.0.0.1", 3000)
    assert parse_address("[::1]:2575") == ("::1", 2575)
    for bad in ("host", "host:", ":2575", "host:0", "host:70000", "host:x"):
        with pytest.raises(ValueError):
            parse_address(bad)
    with pytest.raises(ValueError):
        default_mllp_address("registry:8010")

    cx = f"9434765919^^^&{NHS_NUMBER_OID}&ISO"
    assert local_decision(f"9434765919^^^NHS&{NHS_NUMBER_OID}&ISO", NHS_NUMBER_OID) == ResolvedPatientId(cx, None)
    assert local_decision("H1^^^&1.2.3&ISO", NHS_NUMBER_OID) == Identifiable("H1", "1.2.3")
    assert local_decision("H1^^^HOSPA", NHS_NUMBER_OID) == Identifiable("H1", None, "HOSPA")
    for bad in ("", "^^^&1.2.3&ISO", "9434765918", "P1"):  # no id; a bare id that is no NHS number
        with pytest.raises(PatientIdUnresolved):
            local_decision(bad, NHS_NUMBER_OID)
    with pytest.raises(PatientIdUnresolved):  # bare ids are taken as NHS numbers only in the NHS domain
        local_decision("9434765919", "1.2.3")
