"""bridgectl: operate the CRM<->ECM streams.

Examples:
  bridgectl status                               lag per partition, groups, outbox backlog, dead letters, pauses
  bridgectl dlq list --source-topic crm.events   dead letters with their error context
  bridgectl dlq show crm.events.dlq:0:3          one dead letter: payload, headers, error
  bridgectl dlq replay --id crm.events.dlq:0:3   send it back to its source topic (after a fix)
  bridgectl dlq replay --error-class TransientHttpError
  bridgectl dlq replay --all
  bridgectl pause crm-to-ecm --reason "ECM maintenance"
  bridgectl resume crm-to-ecm
  bridgectl outbox replay --service crm --since 2026-11-22T10:00:00Z
  bridgectl reconcile                            initial sync, dry run: every CRM organization vs the registry
  bridgectl reconcile --apply                    ... writing links and pending records
  bridgectl reconcile --resume RUN_ID            continue a run after its last handled organization

Connection settings come from the environment: KAFKA_BOOTSTRAP_SERVERS,
CRM_DATABASE_URL, ECM_DATABASE_URL (defaults: the ones `make run` uses); for reconcile
CRM_URL, ECM_URL and the bridge's tokens BRIDGE_CRM_TOKEN, BRIDGE_ECM_TOKEN (locally,
the integration accounts in var/demo-users.json).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from datetime import datetime

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from pydantic import Field
from pydantic_settings import BaseSettings

from infra.logs import error_text
from infra.outages import database_unavailable, unavailable
from infra.outbox_admin import backlog, mark_for_republish
from infra.topic_inspection import committed_offsets, end_offsets, group_members, read_records
from schemas.topics import BRIDGE_CONTROL, CRM_COMMANDS, CRM_EVENTS, DEAD_LETTER_TOPICS, ECM_COMMANDS, ECM_EVENTS
from sync_bridge import dead_letters
from sync_bridge.control import DIRECTIONS, control_record, fold
from sync_bridge.reconcile import reconcile

CONSUMER_GROUPS = {
    CRM_EVENTS: "sync-bridge", ECM_EVENTS: "sync-bridge", ECM_COMMANDS: "ecm-service", CRM_COMMANDS: "crm-service",
}


class CtlSettings(BaseSettings):
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    crm_database_url: str = Field("sqlite+aiosqlite:///var/crm.db", validation_alias="CRM_DATABASE_URL")
    ecm_database_url: str = Field("sqlite+aiosqlite:///var/ecm.db", validation_alias="ECM_DATABASE_URL")
    bridge_group: str = Field("sync-bridge", validation_alias="BRIDGE_APP_ID")
    crm_url: str = Field("http://127.0.0.1:8001", validation_alias="CRM_URL")
    ecm_url: str = Field("http://127.0.0.1:8002", validation_alias="ECM_URL")
    crm_token: str | None = Field(None, validation_alias="BRIDGE_CRM_TOKEN")
    ecm_token: str | None = Field(None, validation_alias="BRIDGE_ECM_TOKEN")
    demo_users_file: str = Field("var/demo-users.json", validation_alias="DEMO_USERS_FILE")

    def tokens(self) -> tuple[str, str]:
        if self.crm_token and self.ecm_token:
            return self.crm_token, self.ecm_token
        try:
            users = {u["name"]: u["token"] for u in json.load(open(self.demo_users_file))}
            return users["crm-integration"], users["ecm-integration"]
        except (OSError, KeyError, ValueError) as exc:
            raise SystemExit("set BRIDGE_CRM_TOKEN and BRIDGE_ECM_TOKEN (the bridge's integration tokens)") from exc


async def status(s: CtlSettings) -> dict:
    groups = {**CONSUMER_GROUPS, CRM_EVENTS: s.bridge_group, ECM_EVENTS: s.bridge_group}
    topics = []
    for topic, group in groups.items():
        ends = await end_offsets(s.kafka_bootstrap_servers, [topic])
        committed = await committed_offsets(s.kafka_bootstrap_servers, group, list(ends))
        partitions = [
            {"partition": tp.partition, "end": end, "committed": committed.get(tp),
             "lag": max(0, end - (committed.get(tp) or 0))}
            for tp, end in sorted(ends.items(), key=lambda kv: kv[0].partition)
        ]
        topics.append({"topic": topic, "group": group, "lag": sum(p["lag"] for p in partitions),
                       "partitions": partitions})
    dlq_ends = await end_offsets(s.kafka_bootstrap_servers, list(DEAD_LETTER_TOPICS))
    dlq = {t: sum(end for tp, end in dlq_ends.items() if tp.topic == t) for t in DEAD_LETTER_TOPICS}
    outbox = {}
    for service, url in (("crm", s.crm_database_url), ("ecm", s.ecm_database_url)):
        try:
            outbox[service] = await backlog(url)
        except Exception as exc:  # report, do not hide the rest of the status
            outbox[service] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    control = fold(await read_records(s.kafka_bootstrap_servers, BRIDGE_CONTROL))
    pauses = {d: control.get(d, {"paused": False}) for d in DIRECTIONS}
    described = await group_members(s.kafka_bootstrap_servers, list(dict.fromkeys(groups.values())))
    consumer_groups = [
        {"group": group, "topics": [t["topic"] for t in topics if t["group"] == group],
         "lag": sum(t["lag"] for t in topics if t["group"] == group),
         **described.get(group, {"state": "unknown", "members": []})}
        for group in dict.fromkeys(groups.values())
    ]
    return {"topics": topics, "groups": consumer_groups, "dead_letters": dlq, "outbox": outbox,
            "directions": pauses}


def unread(group: dict) -> bool:
    """Messages wait and no member of the group is there to read them."""
    return group["lag"] > 0 and not group["members"]


def print_status(report: dict) -> None:
    print("TOPIC           GROUP          PARTITION   END  COMMITTED   LAG")
    for t in report["topics"]:
        for p in t["partitions"]:
            committed = "-" if p["committed"] is None else p["committed"]
            print(f"{t['topic']:<15} {t['group']:<14} {p['partition']:>9} {p['end']:>5} {committed:>10} {p['lag']:>5}")
    print("\nCONSUMER GROUPS")
    for g in report["groups"]:
        warning = f"   NOBODY READING: {g['lag']} message(s) wait" if unread(g) else ""
        print(f"  {g['group']:<14} {g['state']:<20} {len(g['members'])} member(s){warning}")
        for m in g["members"]:
            where = " ".join(part for part in (m["client_id"], m["host"]) if part)
            print(f"    {m['member_id']}" + (f"  ({where})" if where else ""))
    print("\nDEAD LETTERS")
    for topic, count in report["dead_letters"].items():
        print(f"  {topic:<20} {count}")
    print("\nOUTBOX BACKLOG")
    for service, b in report["outbox"].items():
        if "error" in b:
            print(f"  {service}: unavailable ({b['error']})")
        else:
            print(f"  {service}: {b['unsent']} unsent, oldest {b['oldest_unsent_age_s']} s, {b['total']} rows in all")
    print("\nDIRECTIONS")
    for direction, state in report["directions"].items():
        if state.get("paused"):
            print(f"  {direction}: PAUSED since {state.get('at')} by {state.get('by')} ({state.get('reason') or '-'})")
        else:
            print(f"  {direction}: running")


async def set_pause(s: CtlSettings, direction: str, paused: bool, reason: str | None) -> None:
    key, value = control_record(direction, paused=paused, reason=reason, by=getpass.getuser())
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(BRIDGE_CONTROL, value=value, key=key)
    finally:
        await producer.stop()


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2026-11-22T10:00:00Z")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridgectl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="lag per topic and partition, groups, outbox backlog, dead letters, pauses")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    dlq = sub.add_parser("dlq", help="list, show and replay dead letters").add_subparsers(dest="dlq", required=True)
    for name, help_ in (("list", "dead letters with their error context"), ("replay", "send dead letters back")):
        p = dlq.add_parser(name, help=help_)
        p.add_argument("--id", action="append", default=[], help="a dead letter id (repeatable)")
        p.add_argument("--source-topic", help="only letters from this topic")
        p.add_argument("--error-class", help="only letters that failed with this exception class")
        p.add_argument("--type", dest="message_type", help="only letters of this message type")
        p.add_argument("--json", action="store_true")
        if name == "replay":
            p.add_argument("--all", action="store_true", help="replay every dead letter (no filter needed)")
            p.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    show = dlq.add_parser("show", help="one dead letter in full")
    show.add_argument("id", help="<dlq topic>:<partition>:<offset>, as `dlq list` prints it")

    for name, help_ in (("pause", "stop a direction before its next message"), ("resume", "let it run again")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("direction", choices=DIRECTIONS)
        if name == "pause":
            p.add_argument("--reason", help="shown in `status`")

    rec = sub.add_parser("reconcile", help="initial sync: every CRM organization against the registry")
    rec.add_argument("--apply", action="store_true", help="write links and pending records (default: dry run)")
    rec.add_argument("--resume", metavar="RUN_ID", help="continue this run after its last handled organization")
    rec.add_argument("--batch", type=int, default=500, help="organizations per batch (default 500)")
    outbox = sub.add_parser("outbox", help="outbox operations").add_subparsers(dest="outbox", required=True)
    rp = outbox.add_parser("replay", help="republish already-sent rows (consumers are idempotent)")
    rp.add_argument("--service", choices=("crm", "ecm"), required=True)
    rp.add_argument("--since", type=parse_time, required=True, help="ISO time with zone")
    rp.add_argument("--until", type=parse_time, help="ISO time with zone (default: now)")
    return parser


async def run(args, s: CtlSettings) -> int:
    if args.command == "status":
        report = await status(s)
        print(json.dumps(report, indent=2)) if args.json else print_status(report)
    elif args.command == "dlq":
        letters = await dead_letters.list_letters(s.kafka_bootstrap_servers)
        if args.dlq == "show":
            found = [letter for letter in letters if letter.id == args.id]
            if not found:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return 2
            print(json.dumps(found[0].detail(), indent=2, ensure_ascii=False))
            return 0
        selected = [letter for letter in letters if dead_letters.matches(
            letter, ids=set(args.id), source_topic=args.source_topic, error_class=args.error_class,
            message_type=args.message_type)]
        if args.dlq == "list":
            rows = [letter.summary() for letter in selected]
            if args.json:
                print(json.dumps(rows, indent=2, ensure_ascii=False))
            else:
                for row in rows:
                    print(f"{row['id']:<28} from {row['source']:<22} {row['type']:<30} {row['error_class']}: "
                          f"{row['error']} (attempts {row['attempts']})")
                print(f"{len(rows)} dead letter(s)")
            return 0
        filtered = args.id or args.source_topic or args.error_class or args.message_type
        if not filtered and not args.all:
            print("say which letters: --id, a filter, or --all", file=sys.stderr)
            return 2
        if args.dry_run:
            for letter in selected:
                print(f"would replay {letter.id} -> {letter.source_topic}")
            return 0
        try:
            count = await dead_letters.replay(s.kafka_bootstrap_servers, selected)
        except dead_letters.NotReplayable as exc:
            print(f"not replayed: {exc}", file=sys.stderr)
            return 1
        print(f"replayed {count} dead letter(s)")
    elif args.command in ("pause", "resume"):
        await set_pause(s, args.direction, args.command == "pause", getattr(args, "reason", None))
        print(f"{args.direction}: {'paused' if args.command == 'pause' else 'resumed'}")
    elif args.command == "reconcile":
        crm_token, ecm_token = s.tokens()
        await reconcile(crm_url=s.crm_url, ecm_url=s.ecm_url, crm_token=crm_token, ecm_token=ecm_token,
                        apply=args.apply, resume_run=args.resume, batch=max(1, min(args.batch, 1000)))
    elif args.command == "outbox":
        url = s.crm_database_url if args.service == "crm" else s.ecm_database_url
        count, oldest = await mark_for_republish(url, args.since, args.until)
        print(f"{args.service}: {count} outbox row(s) handed back to the relay for republishing")
        if oldest is None or oldest > args.since:
            held = f"since {oldest.isoformat()}" if oldest else "no rows at all"
            print(f"{args.service}: note: the outbox holds {held}; sent rows older than "
                  f"{args.service.upper()}_OUTBOX_KEEP_DAYS are pruned and cannot be replayed")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = CtlSettings()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a broker away is said once, below
    try:
        return asyncio.run(run(args, settings))
    except Exception as exc:
        what = unreachable(exc, settings)
        if what is None:
            raise
        detail = error_text(exc)
        if type(exc).__name__ not in detail:
            detail = f"{type(exc).__name__}: {detail}"
        print(f"bridgectl: {what} cannot be reached ({detail})", file=sys.stderr)
        return 1


def unreachable(exc: BaseException, s: CtlSettings) -> str | None:
    """Which of bridgectl's dependencies a failure says is away, or None for another failure."""
    if isinstance(exc, KafkaConnectionError):
        return f"the broker at {s.kafka_bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS)"
    if isinstance(exc, httpx.TransportError) and unavailable(exc):
        try:
            return f"{exc.request.url.copy_with(path='/', query=None)} (CRM_URL, ECM_URL)"
        except RuntimeError:  # an error raised without its request
            return "an API (CRM_URL, ECM_URL)"
    if database_unavailable(exc):
        return "a database (CRM_DATABASE_URL, ECM_DATABASE_URL)"
    return None


if __name__ == "__main__":
    sys.exit(main())
