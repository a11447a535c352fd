"""A caller without XUA is the node its verified TLS client certificate names ([[nodes]] certificate-cn / -sha256)."""

import ssl
from datetime import UTC, datetime
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from ihe import tls
from ihe.policy.config import PolicyConfigError, load_policy_file, parse_policy
from ihe.policy.decide import decide, effective
from ihe.policy.model import DocumentFacts, PatientFacts, Requester
from ihe.policy.requester import requester_of
from local_network import cli, pki

A, B = "1.3.6.1.4.1.21367.2026.1", "1.3.6.1.4.1.21367.2026.2"
SHA = "ab" * 32
NOW = datetime(2026, 12, 6, tzinfo=UTC)

POLICY = parse_policy({
    "anonymous": "deny",
    "organisations": [{"id": A}, {"id": B}],
    "nodes": [{"certificate-cn": "hospital-a-repository (xds-local)", "organisation": A},
              {"certificate_sha256": ":".join(SHA[i:i + 2] for i in range(0, 64, 2)).upper(), "organisation": B,
               "role": "radiologist"},
              {"network": "127.0.0.0/8", "organisation": B},
              {"certificate-cn": "portal (xds-local)", "policy-endpoints": ["portal"]}],
})


def test_a_certificate_names_its_node_before_its_address():
    by_cn = effective(POLICY, Requester(node="127.0.0.1", certificate="hospital-a-repository (xds-local)"))
    assert (by_cn.organisation, by_cn.source, by_cn.role) == (A, "node", None)
    by_sha = effective(POLICY, Requester(node="10.9.9.9", certificate="other", certificate_sha256=SHA))
    assert (by_sha.organisation, by_sha.role) == (B, "radiologist")
    # an unknown certificate from a listed network is still that network's node; from elsewhere nobody
    assert effective(POLICY, Requester(node="127.0.0.5", certificate="stranger")).organisation == B
    assert effective(POLICY, Requester(node="10.9.9.9", certificate="stranger")).organisation is None


def test_the_node_decides_like_its_organisation_and_an_unnamed_one_is_anonymous():
    own = DocumentFacts(owner=A)
    repo = Requester(node="10.0.0.1", certificate="hospital-a-repository (xds-local)")
    assert decide(POLICY, repo, PatientFacts(), own, NOW).basis == "own"
    assert not decide(POLICY, repo, PatientFacts(), DocumentFacts(owner=B), NOW).permit
    # the portal's entry has no organisation: without its user's XUA it is nobody, and anonymous is denied
    portal = decide(POLICY, Requester(node="10.0.0.2", certificate="portal (xds-local)"), PatientFacts(), own, NOW)
    assert (portal.permit, portal.basis) == (False, "anonymous")
    # an XUA identity wins over the certificate
    xua = Requester(organisation=B, source="xua", certificate="hospital-a-repository (xds-local)")
    assert effective(POLICY, xua).organisation == B


def test_requester_json_carries_the_certificate():
    r = Requester(node="10.0.0.1", certificate="x (xds-local)", certificate_sha256=SHA)
    assert Requester.from_json(r.as_json()) == r


@pytest.mark.parametrize(("node", "message"), [
    ({"organisation": A}, "needs a certificate-cn, a certificate-sha256 or a network"),
    ({"certificate-sha256": "abc", "organisation": A}, "not a SHA-256 fingerprint"),
    ({"certificate-cn": "x", "organisation": A, "policy-endpoints": ["everything"]}, "unknown everything"),
    ({"certificate-cn": "x"}, "needs an organisation"),
    ({"certificate-cn": "x", "organisation": A, "colour": "red"}, "unknown keys colour"),
])
def test_bad_node_entries_are_named(node, message):
    with pytest.raises(PolicyConfigError, match=message):
        parse_policy({"organisations": [{"id": A}], "nodes": [node]})


def test_xds_local_writes_deny_with_its_nodes_and_permit_only_when_insecure(tmp_path):
    secure = load_policy_file(cli.access_policy_file(tmp_path / "tls"))
    assert secure.anonymous.value == "deny"
    for h in cli.HOSPITALS:
        for kind in ("repository", "imaging"):
            node = secure.node_of(Requester(certificate=pki.common_name(f"{h.name}-{kind}")))
            assert node is not None and node.organisation == cli.organisation_id(h)
            assert node.policy_endpoints == {"decisions"}
    portal = [n for n in secure.nodes if n.certificate_cn == pki.common_name("portal")]
    assert len(portal) == 1 and portal[0].organisation is None and portal[0].policy_endpoints == {"decisions", "portal"}
    assert cli.anonymous_note(cli.access_policy_file(tmp_path / "tls"), False) is None
    insecure = cli.access_policy_file(tmp_path / "plain", insecure=True)
    assert load_policy_file(insecure).anonymous.value == "permit"
    assert "--insecure" in (cli.anonymous_note(insecure, True) or "")
    assert "delete it" in (cli.anonymous_note(insecure, False) or "")


async def test_a_handler_reads_the_verified_client_certificate_through_the_gated_listener(tmp_path):
    region = pki.ensure_region_pki(tmp_path, ["registry", "hospital-a-repository"])
    server_tls = tls.configure(SimpleNamespace(**region.nodes["registry"].as_dict()))
    tls.reset()
    client = region.nodes["hospital-a-repository"]
    seen: list[Requester] = []

    async def who(request: web.Request) -> web.Response:
        seen.append(requester_of(request))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/who", who)
    runner = web.AppRunner(app)
    await runner.setup()
    site = tls.site(runner, "127.0.0.1", 0, server_tls)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]
        ctx = tls.client_context(tls.TlsConfig(client.cert, client.key, client.ca))
        async with aiohttp.ClientSession() as session, session.get(f"https://127.0.0.1:{port}/who", ssl=ctx) as r:
            assert r.status == 200
    finally:
        await runner.cleanup()
    der = ssl.PEM_cert_to_DER_cert(client.cert.read_text())
    assert seen == [Requester(node="127.0.0.1", certificate=pki.common_name("hospital-a-repository"),
                              certificate_sha256=tls.fingerprint(der))]
    assert effective(POLICY, seen[0]).organisation == A
