"""`atelier audit`: usage report from the audit log, with bulk-pattern flags."""

from __future__ import annotations

import json


def register(sub) -> None:
    from ui.cli import add_profile_args

    p = sub.add_parser("audit", help="print a usage report from the audit log (requests, decisions, flags)")
    p.add_argument("--db", help="audit database (default: the profile's store.audit)")
    p.add_argument("--since", type=float, default=None, metavar="HOURS", help="only the last HOURS hours")
    p.add_argument("--user", help="list one user's records")
    p.add_argument("--json", action="store_true")
    add_profile_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    from tools.errors import AtelierError
    from tools.safety import AuditLog

    url = args.db
    if not url:
        from ui.cli import load_profile_from_args

        url = load_profile_from_args(args).store.audit_url()
    if not url.startswith(("postgres://", "postgresql://")) and not Path(url.removeprefix("sqlite:///")).exists():
        raise AtelierError(f"no audit log at {url} yet (it is created by the first request)")
    log = AuditLog(url)
    since = time.time() - args.since * 3600 if args.since else None
    if args.user:
        rows = log.events(user_id=args.user, since=since)
        if args.json:
            print(json.dumps(rows, indent=2, default=str, ensure_ascii=False))
        else:
            for r in rows:
                extra = {k: v for k, v in r.items() if k not in ("id", "ts", "event", "user_id", "thread_id")}
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['ts']))} {r['event']:12} "
                      f"{r['thread_id'] or '-':16} {json.dumps(extra, ensure_ascii=False, default=str)[:160]}")
        return 0
    report = log.report(since=since)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"audit log {url}: {report['records']} records, {report['users']} users, {report['threads']} threads")
    print("  events:    " + ", ".join(f"{k} {v}" for k, v in sorted(report["events"].items())))
    print("  decisions: " + (", ".join(f"{k} {v}" for k, v in sorted(report["decisions"].items())) or "-"))
    print("  refusals:  " + (", ".join(f"{k} {v}" for k, v in sorted(report["refusals_by_category"].items())) or "-"))
    print("  tools:     " + (", ".join(f"{k} {v}" for k, v in sorted(report["tools"].items())) or "-"))
    print(f"  images:    {report['images']}")
    print("  per user:")
    for user, counts in report["per_user"].items():
        print(f"    {user:20} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("  flags:" + ("" if report["flags"] else " none"))
    for f in report["flags"]:
        print(f"    {f['user_id']:20} {f['flag']:18} {f['detail']}")
    return 0
