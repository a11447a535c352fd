"""The SOAP HTTP edge: bad input gets a SOAP 1.2 Fault with a clear reason, never a stack trace."""

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree

from ihe.http import SoapReply, SoapService
from ihe.namespaces import SOAP12, WSA, qn
from ihe.soap import parse_fault
from ihe.xml import parse_xml

SOAP = "application/soap+xml; charset=UTF-8"


def envelope(action: str | None = "urn:test:Echo", body: str = '<x:Echo xmlns:x="urn:x">hi</x:Echo>') -> bytes:
    header = f"<a:Action>{action}</a:Action><a:MessageID>urn:uuid:42</a:MessageID>" if action else ""
    return (f'<s:Envelope xmlns:s="{SOAP12}" xmlns:a="{WSA}"><s:Header>{header}</s:Header>'
            f"<s:Body>{body}</s:Body></s:Envelope>").encode()


@pytest.fixture
async def client():
    async def echo(request):
        reply = etree.Element("{urn:x}EchoResponse")
        reply.text = request.body.text
        return SoapReply("urn:test:EchoResponse", reply)

    async def broken(request):
        raise RuntimeError("secret internal detail")

    service = SoapService({"urn:test:Echo": echo, "urn:test:Broken": broken}, max_body_bytes=4096)
    app = web.Application()
    app.router.add_post("/soap", service.handle)
    async with TestClient(TestServer(app)) as c:
        yield c


async def fault_of(resp):
    root = parse_xml(await resp.read())
    fault = parse_fault(root)
    assert fault is not None, "expected a SOAP Fault"
    return fault


async def test_dispatches_by_action_and_relates_response(client):
    resp = await client.post("/soap", data=envelope(), headers={"Content-Type": SOAP})
    assert resp.status == 200
    assert 'action="urn:test:EchoResponse"' in resp.headers["Content-Type"]
    root = parse_xml(await resp.read())
    assert root.findtext(f"{qn(SOAP12, 'Header')}/{qn(WSA, 'RelatesTo')}") == "urn:uuid:42"
    assert root.findtext(f"{qn(SOAP12, 'Body')}/{{urn:x}}EchoResponse") == "hi"


@pytest.mark.parametrize(
    "data, content_type, status, code, words",
    [
        (envelope(), "text/xml; charset=utf-8", 500, "VersionMismatch", "SOAP 1.1"),
        (envelope(), "application/json", 400, "Sender", "unsupported Content-Type"),
        (b"<not-closed>", SOAP, 400, "Sender", "malformed XML"),
        (b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>', SOAP, 400, "Sender", "DOCTYPE"),
        (envelope(action=None), SOAP, 400, "Sender", "Action"),
        (envelope(action="urn:test:Unknown"), SOAP, 400, "Sender", "not supported"),
        (envelope(body="<x:Echo xmlns:x='urn:x'>" + "y" * 5000 + "</x:Echo>"), SOAP, 400, "Sender", "exceeds"),
    ],
)
async def test_bad_requests_get_a_clear_fault(client, data, content_type, status, code, words):
    resp = await client.post("/soap", data=data, headers={"Content-Type": content_type})
    assert resp.status == status
    fault = await fault_of(resp)
    assert fault.code == code
    assert words in fault.reason


async def test_internal_error_is_a_receiver_fault_without_details(client):
    resp = await client.post("/soap", data=envelope(action="urn:test:Broken"), headers={"Content-Type": SOAP})
    assert resp.status == 500
    text = (await resp.read()).decode()
    assert "secret internal detail" not in text
    assert "Traceback" not in text
    assert (await fault_of(resp)).code == "Receiver"
