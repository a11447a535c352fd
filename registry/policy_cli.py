"""``xds-registry policy ...``: the administrator's commands of the access policy.

    xds-registry policy opt-out  --patient CX [--reason TEXT] [--by NAME]
    xds-registry policy opt-in   --patient CX [--reason TEXT] [--by NAME]
    xds-registry policy refer    --patient CX --organisation OID [--days N] [--by NAME]
    xds-registry policy status   --patient CX          # relationships, opt-out, grants
    xds-registry policy break-glass [--all]            # grants to review (not yet reviewed; --all: every one)
    xds-registry policy review   --grant ID --by NAME  # mark a break-glass grant reviewed

They take the registry's own options (``--database-url``, ``--config``, ``--access-policy``, the
XDS_REGISTRY_* variables), write to its database, and every change is a ``policy_event`` row and, with
``--audit-repository``, an ATNA Security Alert (Security Configuration) sent before the command ends (what
cannot be sent within ten seconds stays in the audit spool for the next process using it).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys

import asyncpg

from ihe.config import build_parser, resolve
from ihe.database import resolve_database_url
from registry.settings import OPTIONS, RegistrySettings


def build_policy_parser():
    parser = build_parser("registry", "the access policy's administrator commands", OPTIONS)
    parser.prog = "xds-registry policy"
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("opt-out", "the patient opts out of sharing"), ("opt-in", "the patient opts back in")):
        p = commands.add_parser(name, help=text)
        p.add_argument("--patient", required=True, help="the patient's id (CX, e.g. NHS^^^&OID&ISO)")
        p.add_argument("--reason", help="why (kept with the change)")
        p.add_argument("--by", default=None, help="who makes the change (default: the login name)")
    p = commands.add_parser("refer", help="an explicit referral: the organisation may see the patient's documents")
    p.add_argument("--patient", required=True)
    p.add_argument("--organisation", required=True, help="the organisation's id (OID) in the policy file")
    p.add_argument("--days", type=float, help="how long (default: the policy's referral-days)")
    p.add_argument("--by", default=None)
    p = commands.add_parser("status", help="the patient's relationships, opt-out and break-glass grants")
    p.add_argument("--patient", required=True)
    p = commands.add_parser("break-glass", help="break-glass grants to review")
    p.add_argument("--all", action="store_true", help="reviewed ones too")
    p = commands.add_parser("review", help="mark a break-glass grant reviewed")
    p.add_argument("--grant", type=int, required=True)
    p.add_argument("--by", default=None)
    return parser


async def run(args, settings: RegistrySettings, database_url: str) -> int:
    from ihe.policy.config import load_policy_file
    from registry import access_policy as ap

    if settings.access_policy is None and args.command in ("refer", "status"):
        print("xds-registry policy: --access-policy (the policy file) is needed for this command", file=sys.stderr)
        return 2
    policy = load_policy_file(settings.access_policy) if settings.access_policy is not None else None
    actor = getattr(args, "by", None) or getpass.getuser()
    conn = await asyncpg.connect(database_url)
    try:
        patient = None
        if getattr(args, "patient", None):
            patient = await ap.patient_row(conn, args.patient)
            if patient is None:
                print(f"xds-registry policy: patient {args.patient} is not known to the registry", file=sys.stderr)
                return 1
        if args.command in ("opt-out", "opt-in"):
            await ap.set_opt_out(conn, patient, args.command == "opt-out", "admin", actor, args.reason)
            print(f"patient {args.patient}: {'opted out' if args.command == 'opt-out' else 'opted in'}")
        elif args.command == "refer":
            org = policy.organisation(args.organisation)
            if org is None:
                print(f"xds-registry policy: {args.organisation} is not an organisation of the policy", file=sys.stderr)
                return 1
            expires = await ap.refer(conn, policy, patient, org.id, actor, args.days)
            print(f"patient {args.patient}: referred to {org.id} until {expires.isoformat()}")
        elif args.command == "status":
            facts = await ap.patient_facts(conn, policy, patient, ap.now_utc())
            print(json.dumps({
                "opted_out": facts.opted_out,
                "relationships": [{"organisation": r.organisation, "origin": r.origin,
                                   "expires": r.expires.isoformat() if r.expires else None}
                                  for r in facts.relationships],
                "break_glass": [{"organisation": g.organisation, "user": g.user, "expires": g.expires.isoformat()}
                                for g in facts.grants]}, indent=2))
        elif args.command == "break-glass":
            for r in await ap.break_glass_list(conn, everything=args.all):
                print(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}))
        elif args.command == "review":
            if not await ap.review_break_glass(conn, args.grant, actor):
                print(f"xds-registry policy: no break-glass grant {args.grant}", file=sys.stderr)
                return 1
            print(f"break-glass grant {args.grant}: reviewed by {actor}")
        if args.command in ("opt-out", "opt-in", "refer", "review"):
            await asyncio.to_thread(audit_change, settings, args, actor)
    finally:
        await conn.close()
    return 0


def audit_change(settings: RegistrySettings, args, actor: str) -> None:
    from ihe.audit.auditor import open_auditor
    from ihe.audit.events import ALERT_SECURITY_CONFIGURATION, security_alert_event

    auditor = open_auditor(settings, "xds-registry")
    if auditor is None:
        return
    what = {"opt-out": f"patient {getattr(args, 'patient', '')} opted out of sharing",
            "opt-in": f"patient {getattr(args, 'patient', '')} opted in to sharing",
            "refer": f"patient {getattr(args, 'patient', '')} referred to {getattr(args, 'organisation', '')}",
            "review": f"break-glass grant {getattr(args, 'grant', '')} reviewed"}[args.command]
    reason = f"access policy change by {actor}: {what}" + (f" ({args.reason})" if getattr(args, "reason", None)
                                                             else "")
    try:
        auditor.record(security_alert_event(alert=ALERT_SECURITY_CONFIGURATION, reason=reason, requestor=actor,
                                            requestor_nap=None, node="xds-registry policy", node_nap=None,
                                            source_id=auditor.source_id))
        if not auditor.sender.drain(10):
            print("xds-registry policy: the audit record is spooled; the audit repository did not take it yet",
                  file=sys.stderr)
    finally:
        auditor.close()


def main(argv: list[str]) -> int:
    args = build_policy_parser().parse_args(argv)
    settings = RegistrySettings.from_dict(resolve("registry", OPTIONS, args))
    database_url, embedded = resolve_database_url(settings.database_url, settings.data_dir)
    try:
        return asyncio.run(run(args, settings, database_url))
    finally:
        del embedded
