"""``sentinel alerts``: the aggregator's alerts in a terminal, through its REST API.

    sentinel alerts [--url URL] [--severity critical,high] [--service S] [--model M] [--type T]
                    [--status open] [--limit 50] [--follow] [--json] [--token-file FILE]

Prints the most recent matching alerts as a table, oldest first so the newest is just above the
prompt; ``--follow`` then prints one line per live event (``GET /api/v1/stream``) until interrupted
or until the aggregator ends the stream. The token is ``SENTINEL_API_TOKEN`` or ``--token-file``
(a viewer's is enough); the URL ``--url`` or ``SENTINEL_URL``.

Exit status: 0 done, 1 the aggregator cannot be reached or refused the request, 2 a bad option,
130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from sentinel.alerts import SEVERITIES, STATUSES

__all__ = ["format_event", "format_table", "main", "parse_sse"]

DEFAULT_URL = "http://127.0.0.1:9090"
MAX_LIMIT = 1000  # the API's page limit
#: Live events the stream sends ("hello" and anything newer are skipped).
EVENTS = ("alert", "update", "resolved")
#: The stream sends a keepalive every 15 s; four missed ones mean the connection is gone.
STREAM_READ_TIMEOUT_S = 60.0

_HEADERS = ("TIME", "SEVERITY", "TYPE", "SERVICE", "MODEL", "METRIC", "VALUE VS BASELINE", "STATUS", "COUNT", "ID")
# Minimum widths: the table grows a column for longer values; live event lines, printed one at a
# time, use these, so they line up under the table when the values fit.
_WIDTHS = (20, 8, 16, 12, 12, 16, 18, 12, 5, 8)
_RIGHT = frozenset({8})  # COUNT
_TAGS = {"alert": "[new]", "update": "[update]", "resolved": "[resolved]"}


class CliError(Exception):
    """A message for stderr and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --- formatting (pure) --------------------------------------------------------------------------

def _num(x: Any) -> str:
    if not isinstance(x, int | float) or isinstance(x, bool) or math.isnan(x) or math.isinf(x):
        return "-"
    return f"{x:.0f}" if abs(x) >= 10_000 else f"{x:.4g}"


def _time(text: Any) -> str:
    """RFC 3339 to whole UTC seconds (milliseconds only widen the column)."""
    if not isinstance(text, str) or not text:
        return "-"
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cells(alert: Mapping[str, Any]) -> list[str]:
    details = alert.get("details") or {}
    value = f"{_num(details.get('value'))} vs {_num(details.get('baseline'))}"
    members = alert.get("members") or []
    model = alert.get("model") or (f"{len(members)} series" if len(members) > 1 else "-")  # a group of models
    return [_time(alert.get("timestamp")), str(alert.get("severity") or "-"), str(alert.get("anomaly_type") or "-"),
            str(alert.get("service_name") or "-"), str(model), str(details.get("metric") or "-"),
            value, str(alert.get("status") or "-"), str(alert.get("count", "-")), str(alert.get("alert_id") or "-")[:8]]


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    parts = [c.rjust(w) if i in _RIGHT else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
    return "  ".join(parts).rstrip()


def format_table(alerts: Sequence[Mapping[str, Any]]) -> str:
    """The alerts as an aligned table with a header line, in the order given."""
    rows = [_cells(a) for a in alerts]
    widths = [max([w, len(h), *(len(r[i]) for r in rows)]) for i, (h, w) in enumerate(zip(_HEADERS, _WIDTHS,
                                                                                            strict=True))]
    return "\n".join(_row(r, widths) for r in [list(_HEADERS), *rows])


def format_event(event: Mapping[str, Any]) -> str:
    """One live event (``{"event": ..., "alert": {...}, "lagged": n}``) as one table-like line."""
    line = _row(_cells(event.get("alert") or {}), _WIDTHS)
    line += "  " + _TAGS.get(str(event.get("event")), f"[{event.get('event')}]")
    if event.get("lagged"):
        line += f"  ({event['lagged']} earlier events dropped: this terminal read too slowly)"
    return line


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` for each event of a text/event-stream given line by line (comments skipped)."""
    event = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


# --- options ------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sentinel alerts", description="List the aggregator's alerts, and follow new ones live.",
        epilog="Token: SENTINEL_API_TOKEN or --token-file. Exit status: 0 ok, 1 aggregator unreachable or "
               "refusing, 2 bad option.")
    p.add_argument("--url", default=os.environ.get("SENTINEL_URL") or DEFAULT_URL,
                   help=f"the aggregator's API (env SENTINEL_URL) [{DEFAULT_URL}]")
    p.add_argument("--token-file", metavar="FILE", help="read the API token from FILE (else env SENTINEL_API_TOKEN)")
    p.add_argument("--severity", action="append", default=[], metavar="S[,S]",
                   help=f"only these severities ({', '.join(SEVERITIES)}); repeatable or a comma list")
    p.add_argument("--service", help="only this service_name")
    p.add_argument("--model", help="only this model")
    p.add_argument("--type", dest="anomaly_type", metavar="TYPE", help="only this anomaly_type")
    p.add_argument("--status", action="append", default=[], metavar="S[,S]",
                   help=f"only these statuses ({', '.join(STATUSES)}); repeatable or a comma list")
    p.add_argument("--limit", type=int, default=50, help=f"how many recent alerts to list (1..{MAX_LIMIT}) [50]")
    p.add_argument("--follow", "-f", action="store_true", help="after the list, print live events until Ctrl-C")
    p.add_argument("--json", action="store_true",
                   help="print JSON: the API's answer; with --follow one {event, alert} object per line "
                        "(the listed alerts as event 'recent')")
    return p


def _choices(option: str, given: Sequence[str], allowed: Sequence[str]) -> list[str]:
    values = [v.strip() for item in given for v in item.split(",") if v.strip()]
    for v in values:
        if v not in allowed:
            raise CliError(f"{option}: {v!r} is not one of {', '.join(allowed)}", 2)
    return values


def _filters(args: argparse.Namespace) -> dict[str, str]:
    """The API's filter parameters (empty ones left out)."""
    params = {"severity": ",".join(_choices("--severity", args.severity, SEVERITIES)),
              "status": ",".join(_choices("--status", args.status, STATUSES)),
              "service": args.service or "", "model": args.model or "", "type": args.anomaly_type or ""}
    return {k: v for k, v in params.items() if v}


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise CliError(f"--token-file: cannot read {args.token_file}: {e.strerror or e}", 2) from None
        if not token:
            raise CliError(f"--token-file: {args.token_file} is empty", 2)
        return token
    return os.environ.get("SENTINEL_API_TOKEN", "").strip() or None


# --- HTTP ---------------------------------------------------------------------------------------

class _Api:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(10.0))

    def unreachable(self, e: httpx.TransportError, *, streaming: bool = False) -> CliError:
        reason = str(e) or type(e).__name__
        if not streaming:
            return CliError(f"cannot reach the aggregator at {self.url}: {reason}")
        if isinstance(e, httpx.ReadTimeout):
            reason = f"nothing received for {STREAM_READ_TIMEOUT_S:.0f} s"
        return CliError(f"lost the connection to the aggregator at {self.url}: {reason}")

    def _check(self, r: httpx.Response) -> None:
        if r.is_success:
            return
        r.read()
        try:
            message = str(r.json().get("error") or r.text)
        except (ValueError, AttributeError):
            message = r.text.strip()[:200] or r.reason_phrase
        hint = "set SENTINEL_API_TOKEN (or --token-file) to a viewer, operator or admin token"
        if r.status_code == 401:
            why = "the token was not accepted" if self.token else "it needs an API token"
            raise CliError(f"the aggregator at {self.url} refused the request (401, {why}): {hint}")
        if r.status_code == 403:
            raise CliError(f"the aggregator at {self.url} refused the request (403, the token may not read "
                           f"alerts): {hint}")
        if r.status_code == 400:  # the message names the parameter, which is the option of the same name
            raise CliError(f"the aggregator rejected the request: {message}", 2)
        raise CliError(f"the aggregator at {self.url} answered HTTP {r.status_code}: {message}")

    def alerts(self, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            r = self.client.get("/api/v1/alerts", params=params)
        except httpx.TransportError as e:
            raise self.unreachable(e) from None
        self._check(r)
        try:
            body = r.json()
            if isinstance(body, dict) and isinstance(body.get("alerts"), list):
                return body
        except ValueError:
            pass
        raise CliError(f"the aggregator at {self.url} did not answer with an alert list (is --url right?)")

    def stream(self, params: Mapping[str, Any]) -> httpx.Response:
        """The open event stream (the caller closes it)."""
        request = self.client.build_request("GET", "/api/v1/stream", params=params,
                                            headers={"Accept": "text/event-stream"},
                                            timeout=httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT_S))
        try:
            r = self.client.send(request, stream=True)
        except httpx.TransportError as e:
            raise self.unreachable(e) from None
        try:
            self._check(r)
        except BaseException:
            r.close()
            raise
        return r


# --- the command --------------------------------------------------------------------------------

def _out(text: str) -> None:
    print(text, flush=True)  # flushed line by line: --follow is often piped


def _print_list(body: dict[str, Any], *, as_json: bool, follow: bool) -> None:
    alerts: list[dict[str, Any]] = body["alerts"]
    if as_json and not follow:
        _out(json.dumps(body, indent=2))
        return
    recent = alerts[::-1]  # the API answers newest first
    if as_json:
        for a in recent:
            _out(json.dumps({"event": "recent", "alert": a}, separators=(",", ":")))
        return
    if recent:
        _out(format_table(recent))
    total = int(body.get("total") or len(alerts))
    if not alerts:
        print("no matching alerts", file=sys.stderr)
    elif total > len(alerts):
        print(f"({len(alerts)} most recent of {total} matching alerts; --limit for more)", file=sys.stderr)


def _follow(api: _Api, filters: dict[str, str], list_params: dict[str, Any], *, as_json: bool) -> int:
    # The stream is opened before the list is fetched, so nothing raised in between is missed (an
    # alert may show twice instead); its events wait in the socket while the list prints.
    r = api.stream(filters)
    try:
        _print_list(api.alerts(list_params), as_json=as_json, follow=True)
        for name, data in parse_sse(r.iter_lines()):
            if name not in EVENTS:
                continue
            try:
                alert = json.loads(data)
            except ValueError:
                continue
            event = {"event": name, "alert": alert}
            _out(json.dumps(event, separators=(",", ":")) if as_json else format_event(event))
    except httpx.TransportError as e:
        raise api.unreachable(e, streaming=True) from None
    finally:
        r.close()
    print("the aggregator ended the stream (shutting down?)", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    url = str(args.url).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--url: {args.url!r} must start with http:// or https://", 2)
    if not 1 <= args.limit <= MAX_LIMIT:
        raise CliError(f"--limit: must be between 1 and {MAX_LIMIT}", 2)
    filters = _filters(args)
    api = _Api(url, _token(args))
    try:
        list_params = {**filters, "limit": args.limit}
        if args.follow:
            return _follow(api, filters, list_params, as_json=args.json)
        _print_list(api.alerts(list_params), as_json=args.json, follow=False)
        return 0
    finally:
        api.client.close()


def run_cli(name: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
            argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and ``run``: the exit statuses of the API clients (``sentinel alerts``, ``sentinel config``)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a malformed option (2, argparse printed why)
        return e.code if isinstance(e.code, int) else 2
    try:
        return run(args)
    except CliError as e:
        print(f"sentinel {name}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("alerts", _parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
