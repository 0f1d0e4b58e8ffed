"""The Slack incoming-webhook message for an alert document (:meth:`sentinel.alerts.Alert.to_dict`).

Shared: the aggregator's ``format: slack`` webhooks and an edge sidecar's Slack sink
(sidecar/local_alerts.py) post the same message for the same document.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

__all__ = ["slack_body"]

# --- the Slack body ---------------------------------------------------------------------------

_EMOJI = {"critical": ":rotating_light:", "high": ":red_circle:", "medium": ":large_orange_circle:",
          "low": ":large_blue_circle:"}


def _esc(text: object) -> str:
    """Slack ``mrkdwn`` escaping: only ``&``, ``<`` and ``>`` are special."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link_url(url: str) -> str:
    """``url`` safe inside Slack's ``<url|label>``: ``|``, ``<``, ``>``, spaces percent-encoded, ``&`` escaped.

    A service name in the runbook template must not end the link early or open another one.

    >>> _link_url("https://x/runbooks#a|<!channel> b&c")
    'https://x/runbooks#a%7C%3C!channel%3E%20b&amp;c'
    """
    return _esc(urllib.parse.quote(url, safe=":/?#[]@!$&'()*+,;=%~"))


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "n/a" if x is None else str(x)


def slack_body(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` fallback and ``blocks``) for an alert document."""
    severity = str(doc.get("severity") or "unknown")
    anomaly = str(doc.get("anomaly_type") or "anomaly")
    service = doc.get("service_name") or "unknown service"
    model = doc.get("model")
    details = doc.get("details") or {}
    metric = details.get("metric") or "value"
    measured = f"{metric} {_fmt(details.get('value'))} vs baseline {_fmt(details.get('baseline'))}"
    sigma = details.get("deviation_sigma")
    if isinstance(sigma, int | float):
        measured += f" ({sigma:+.1f}σ)"
    where = f"{service} / {model}" if model else str(service)
    title = f"[{severity.upper()}] {anomaly} on {where}"
    summary = str(doc.get("summary") or "")
    # The fallback text is mrkdwn too: <!channel>, <!here> or <https://…|…> in a service or model name
    # would notify or link, so every field is escaped.
    text = _esc(f"{title}: {summary or measured}")
    runbook = doc.get("runbook_url")

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{_EMOJI.get(severity, '')} {title}"[:150],
                                    "emoji": True}},
    ]
    if summary:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _esc(summary)[:3000]}})
    fields = [
        ("Severity", severity), ("Type", anomaly), ("Service", service), ("Model", model or "n/a"),
        ("Value", measured), ("Detected by", f"{doc.get('detection_method') or 'n/a'} "
                                             f"(confidence {_fmt(doc.get('confidence'))})"),
    ]
    blocks.append({"type": "section", "fields": [
        {"type": "mrkdwn", "text": f"*{name}*\n{_esc(value)}"[:2000]} for name, value in fields]})
    if runbook:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"<{_link_url(str(runbook))}|Runbook>"}})
        text += f" (runbook: {_esc(runbook)})"
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": _esc(f"alert {doc.get('alert_id')} · {doc.get('timestamp')}")}]})
    return {"text": text, "blocks": blocks}
